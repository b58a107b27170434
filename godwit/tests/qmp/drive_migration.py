"""Drives a Godwit source VM through a live migration with QEMU's own QMP
client library (qemu.qmp), unchanged: greeting, capabilities negotiation,
query-status, migrate-set-parameters, migrate, query-migrate, events.

Usage: drive_migration.py SOCKET URI MODE
Prints one JSON line: the final query-migrate status, the events seen, and
the version the greeting announced. Exits non-zero on any failure.
"""
import asyncio
import json
import sys

from qemu.qmp import EventListener, QMPClient


async def main(sock: str, uri: str, mode: str) -> int:
    qmp = QMPClient("godwit-test")
    listener = EventListener()
    qmp.register_listener(listener)
    await asyncio.wait_for(qmp.connect(sock), 10)
    version = qmp.greeting.QMP.version
    status = await qmp.execute("query-status")
    if status.get("status") != "running":
        print(f"query-status: {status}", file=sys.stderr)
        return 1
    await qmp.execute(
        "migrate-set-parameters",
        {"mode": mode, "prepaging": "dual", "tls-plain": True},
    )
    await qmp.execute("migrate", {"uri": uri})
    final = None
    for _ in range(600):
        r = await qmp.execute("query-migrate")
        if r["status"] in ("completed", "failed", "cancelled"):
            final = r
            break
        await asyncio.sleep(0.1)
    # The last MIGRATION events may trail the reply by a moment.
    await asyncio.sleep(0.2)
    events = [(e["event"], e.get("data", {}).get("status")) for e in listener.clear()]
    await qmp.disconnect()
    print(json.dumps({"status": final and final["status"], "events": events, "version": version}))
    return 0 if final and final["status"] == "completed" else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3])))

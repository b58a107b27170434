/*
 * The workloads init can run (godwit.workload=NAME). Each one reads its own
 * parameters, prints READY through heartbeat_ready(), heartbeats from its own
 * work loop and returns after printing DONE; init then powers off.
 */
#ifndef GODWIT_WORKLOADS_H
#define GODWIT_WORKLOADS_H

#include "report.h"

void idle_run(struct heartbeat *hb);
void memtouch_run(struct heartbeat *hb);
void quicksort_run(struct heartbeat *hb);
void allocfree_run(struct heartbeat *hb);
void smp_run(struct heartbeat *hb);
void netserve_run(struct heartbeat *hb);
void diskcheck_run(struct heartbeat *hb);

/* Memory a workload may take, in MiB: MemAvailable minus a margin for the
 * kernel, so a too-large parameter is an ERROR instead of the OOM killer. */
#define MEM_MARGIN_MB 32
static inline uint64_t mem_budget_mb(void)
{
    uint64_t avail_mb = meminfo_kb("MemAvailable") / 1024;
    return avail_mb > MEM_MARGIN_MB ? avail_mb - MEM_MARGIN_MB : 0;
}

#endif

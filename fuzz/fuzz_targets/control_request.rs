//! The control socket's requests: the byte stream of one connection
//! (`control::serve_bytes`, the server's own loop: the streaming JSON
//! splitter `read_request`, JSON parsing, request validation, capabilities
//! negotiation), with a target that parses every command as the VMM does
//! (`Command::parse`) and applies migration parameters to a `Params`.
//!
//! Input: `sel:u8 stream...`; the request size limit is 64, 256 or 4096
//! bytes or the real `MAX_LINE_BYTES` by `sel`. Oracle: no panic, and
//! every reply is an object with exactly one of `return` and `error`.
#![no_main]

use godwit_fuzz::input::Input;
use godwit_migration::Params;
use godwit_vmm::commands::Command;
use godwit_vmm::control::{self, CommandError, ControlTarget, MAX_LINE_BYTES};
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Map, Value};

struct Parser;

impl ControlTarget for Parser {
    fn execute(&self, name: &str, args: &Map<String, Value>) -> Result<Value, CommandError> {
        let mut p = Params::default();
        match Command::parse(name, args)? {
            Command::MigrateSetParameters(m) => m.apply(&mut p)?,
            Command::Migrate(m) => {
                let _ = m.address();
                m.params.apply(&mut p)?;
            }
            _ => {}
        }
        Ok(json!({}))
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let max = [64, 256, 4096, MAX_LINE_BYTES][usize::from(input.u8() % 4)];
    for reply in control::serve_bytes(input.rest(), max, &Parser) {
        let Value::Object(r) = reply else {
            panic!("a reply that is not an object: {reply}");
        };
        assert!(
            r.contains_key("return") != r.contains_key("error"),
            "a reply with neither or both of return and error: {r:?}"
        );
    }
});

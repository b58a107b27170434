//! virtio-balloon under a hostile driver (see `godwit_fuzz::virtio`):
//! inflate/deflate PFN arrays, stats, free page hints and free page
//! reports from guest-controlled rings. Host actions: a new target, a
//! stats request, starting and stopping a free-page-hint round.
#![no_main]

use godwit_devices::{Balloon, BalloonFeatures, VirtioDevice, VirtioMmio};
use godwit_fuzz::input::Input;
use godwit_fuzz::virtio::{self, Rig};
use godwit_memory::GuestRam;
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;

struct BalloonRig;

impl Rig for BalloonRig {
    fn device(&mut self, ram: &Arc<GuestRam>, flags: u8) -> Box<dyn VirtioDevice> {
        let f = BalloonFeatures {
            stats: flags & 1 == 0,
            deflate_on_oom: flags & 2 != 0,
            free_page_hint: flags & 4 == 0,
            page_poison: flags & 8 == 0,
            reporting: flags & 16 == 0,
        };
        Box::new(Balloon::new(f, ram))
    }

    fn host(&mut self, dev: &mut VirtioMmio, what: u8, arg: u32, _: &mut Input) {
        let Some(b) = dev.device_as_mut::<Balloon>() else {
            return;
        };
        match what % 6 {
            0 => b.set_target_pages(arg),
            1 => b.request_stats(),
            2 => {
                b.start_free_page_hint();
            }
            3 => b.stop_free_page_hint(),
            4 => {
                b.take_reported_pages();
            }
            _ => {
                let _ = (b.stats(), b.hint_status(), b.reporting_status());
                let _ = (b.actual_pages(), b.inflated_pages());
            }
        }
    }
}

fuzz_target!(|data: &[u8]| virtio::run(&mut BalloonRig, data));

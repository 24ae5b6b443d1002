//! The kernel-backed side of layerspec: which real backends this machine can run for each
//! driver, and (as they land) the drivers themselves, implementing
//! [`layerspec_model::Driver`] like the model does.
//!
//! ```
//! use layerspec_model::DriverKind;
//! for b in layerspec_real::backends_for(DriverKind::Overlay2) {
//!     match &b.unavailable {
//!         None => println!("{} can run", b.name),
//!         Some(why) => println!("{} skipped: {why}", b.name),
//!     }
//! }
//! ```
#![deny(missing_docs)]

mod probe;

pub use probe::{backends_for, Backend, HostFacts};

use layerspec_model::{Driver, DriverKind, OverlayOptions};

/// Opens a real driver of `kind` on `backend` (`kernel` or `fuse`) in a fresh sandbox, or
/// says why it cannot run here.
pub fn open_backend(
    kind: DriverKind,
    backend: &str,
    options: OverlayOptions,
) -> Result<Box<dyn Driver + Send>, String> {
    let _ = options;
    match backends_for(kind).into_iter().find(|b| b.name == backend) {
        None => Err(format!("{kind} has no `{backend}` backend")),
        Some(Backend { unavailable: Some(why), .. }) => Err(why),
        Some(_) => Err(format!("{kind} on {backend}: not built yet")),
    }
}

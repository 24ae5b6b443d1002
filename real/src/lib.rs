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

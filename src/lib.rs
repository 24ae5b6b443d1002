//! layerspec: the harness around the specification. It reads scenario files, runs them on
//! the model ([`layerspec_model`]) and on the real drivers ([`layerspec_real`]), judges each
//! step, and reports.
//!
//! ```
//! use layerspec::scenario::parse_str;
//! use layerspec::runner::{run, Status};
//! use layerspec_model::{DriverKind, ModelDriver};
//!
//! let text = r#"
//! title = "a new file lands in the writable layer"
//! claims = ["S2"]
//! [[layer]]
//! id = "base"
//! entries = [{ path = "/etc", dir = true }]
//! [[container]]
//! id = "c1"
//! image = "base"
//! [trace]
//! steps = [
//!   { op = "create", path = "/etc/new" },
//!   { op = "write", path = "/etc/new", data = "hi" },
//!   { op = "read", path = "/etc/new", returns = "hi" },
//! ]
//! "#;
//! let scenario = parse_str("example.toml".as_ref(), text).unwrap();
//! let mut driver = ModelDriver::new(DriverKind::Overlay2, scenario.options.overlay);
//! assert_eq!(run(&scenario, &mut driver).status, Status::Pass);
//! ```
#![deny(missing_docs)]

pub mod catalogue;
pub mod claims;
pub mod compare;
pub mod fuzz;
pub mod report;
pub mod results;
pub mod runner;
pub mod scenario;
pub mod suite;
pub mod vm;

//! Every scenario file x driver as its own test, on the model, with an insta snapshot of the
//! final observation under `snapshots/`, at the model's default kernel (or at 6.1 for a file
//! whose `kernel` range leaves the default out). Filter as usual: `cargo test --test scenarios --
//! overlay2/whiteout`. Real backends this machine cannot run are listed as ignored tests
//! whose names carry the reason.

use layerspec::runner::{run, Status};
use layerspec::scenario::Scenario;
use layerspec::suite;
use layerspec_model::KernelVersion;
use libtest_mimic::{Arguments, Failed, Trial};
use std::collections::BTreeSet;
use std::path::PathBuf;

fn main() {
    let args = Arguments::from_args();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let files = suite::discover(&[root.join("scenarios")]).expect("scenarios/ is readable");
    let (scenarios, errors) = suite::load(&files);
    let mut trials = Vec::new();
    for e in errors {
        let name = format!("parse/{}", e.file.display());
        trials.push(Trial::test(name, move || Err(Failed::from(e.to_string()))));
    }
    let mut drivers_seen = BTreeSet::new();
    for s in scenarios {
        for driver in s.drivers() {
            drivers_seen.insert(driver);
            let name = format!("{}/{}", driver.name(), s.name());
            let s = s.clone();
            trials.push(Trial::test(name, move || model_trial(&s, driver)));
        }
    }
    for driver in drivers_seen {
        for (backend, status) in suite::real_backends(driver) {
            if let Status::Skip(reason) = status {
                let name = format!("{backend}/{} [skipped: {reason}]", driver.name());
                trials.push(Trial::test(name, || Ok(())).with_ignored_flag(true));
            }
        }
    }
    libtest_mimic::run(&args, trials).exit();
}

/// The kernel a file the default kernel does not fall in (`kernel = "< 6.6"`) runs at on
/// the model: the VM tier's, where the real side of such files runs.
const OLDER: KernelVersion = KernelVersion::new(6, 1);

fn model_trial(s: &Scenario, driver: layerspec_model::DriverKind) -> Result<(), Failed> {
    let kernel = match s.kernel_range(driver) {
        Some(range) if !range.contains(KernelVersion::DEFAULT) => {
            if !range.contains(OLDER) {
                return Err(format!(
                    "{}: neither {} nor {OLDER} is in kernel {range}: add a version here",
                    s.file.display(),
                    KernelVersion::DEFAULT
                )
                .into());
            }
            OLDER
        }
        _ => KernelVersion::DEFAULT,
    };
    let result = run(s, &mut layerspec::suite::model_driver(s, driver, kernel));
    match result.status {
        Status::Pass => {}
        Status::Fail(msg) => return Err(format!("{}: {msg}", s.file.display()).into()),
        Status::Skip(reason) => {
            return Err(format!("{}: skipped on the model: {reason}", s.file.display()).into())
        }
    }
    let obs = result.observation.expect("a passing run observes");
    let snap_name = format!("{}@{}", s.name().replace('/', "__"), driver.name());
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("snapshots"));
    settings.set_prepend_module_to_snapshot(false);
    settings.set_input_file(&s.file);
    settings.set_description(s.title.clone());
    settings.set_omit_expression(true);
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        settings.bind(|| insta::assert_yaml_snapshot!(snap_name, obs));
    }))
    .map_err(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "snapshot mismatch".into());
        Failed::from(format!("{}: {msg}", s.file.display()))
    })
}

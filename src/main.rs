//! The `layerspec` command: run, check, claims.

use anyhow::Result;
use clap::{Parser, Subcommand};
use layerspec::report;
use layerspec::runner::{RunResult, Status};
use layerspec::suite::{self, Outcome};
use layerspec_model::DriverKind;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "layerspec",
    version,
    about = "Executable specification of Docker's storage drivers"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run scenario files on the model and on every real backend this machine can run.
    Run {
        /// Files or directories (default: scenarios/).
        paths: Vec<PathBuf>,
        /// Run the model only.
        #[arg(long)]
        model_only: bool,
        /// Only these drivers (comma-separated).
        #[arg(long, value_delimiter = ',')]
        driver: Vec<String>,
        /// Only these backends (comma-separated): model, kernel, fuse, vm. Backend `vm` runs
        /// every scenario x driver it applies to in one boot of the VM tier.
        #[arg(long, value_delimiter = ',')]
        backend: Vec<String>,
        /// One JSON object per scenario x driver x backend.
        #[arg(long)]
        json: bool,
        /// The kernel version (major.minor) whose rules backend `model` follows; default
        /// the model's, 6.18. Real backends are compared with the model at their own kernel.
        #[arg(long)]
        kernel: Option<layerspec_model::KernelVersion>,
    },
    /// Validate scenario files without running them.
    Check {
        /// Files or directories.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Print each claim id with the scenarios that cite it.
    Claims {
        /// Files or directories (default: scenarios/).
        paths: Vec<PathBuf>,
    },
    /// Replay generated traces on the model and a backend; write each divergence, shrunk,
    /// as a scenario file. Exit 0: none, 1: divergences, 2: the backend cannot run.
    Fuzz(layerspec::fuzz::FuzzArgs),
    /// Inside the VM tier's guest: run scenarios or fuzz on the guest kernel, results as
    /// JSON lines between markers (internal).
    #[command(hide = true)]
    Guest {
        #[command(subcommand)]
        cmd: layerspec::vm::guest::GuestCmd,
    },
}

fn main() -> ExitCode {
    match real_main() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("layerspec: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn default_paths(p: Vec<PathBuf>) -> Vec<PathBuf> {
    if p.is_empty() {
        vec![PathBuf::from("scenarios")]
    } else {
        p
    }
}

fn real_main() -> Result<ExitCode> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Fuzz(args) => Ok(ExitCode::from(layerspec::fuzz::main(&args))),
        Cmd::Guest { cmd } => Ok(ExitCode::from(layerspec::vm::guest::main(&cmd))),
        Cmd::Check { paths } => {
            let files = suite::discover(&paths).map_err(anyhow::Error::msg)?;
            let (ok, errs) = suite::load(&files);
            for e in &errs {
                eprintln!("{e}");
            }
            println!("{} file(s) valid, {} invalid", ok.len(), errs.len());
            Ok(if errs.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            })
        }
        Cmd::Claims { paths } => {
            let files = suite::discover(&default_paths(paths)).map_err(anyhow::Error::msg)?;
            let (ok, errs) = suite::load(&files);
            for e in &errs {
                eprintln!("{e}");
            }
            let mut cov: Vec<_> = layerspec::claims::coverage(&ok).into_iter().collect();
            cov.sort_by_key(|(id, _)| layerspec::claims::sort_key(id));
            for (id, who) in cov {
                println!("{id:<7} {:>3}  {}", who.len(), who.join(" "));
            }
            Ok(if errs.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            })
        }
        Cmd::Run {
            paths,
            model_only,
            driver,
            backend,
            json,
            kernel,
        } => {
            let kernel = kernel.unwrap_or_default();
            const BACKENDS: [&str; 5] = ["model", "kernel", "fuse", "vm", "docker"];
            if let Some(b) = backend.iter().find(|b| !BACKENDS.contains(&b.as_str())) {
                anyhow::bail!("unknown backend `{b}` (known: {})", BACKENDS.join(", "));
            }
            let want_model =
                model_only || backend.is_empty() || backend.iter().any(|b| b == "model");
            let only: Option<Vec<DriverKind>> = if driver.is_empty() {
                None
            } else {
                Some(
                    driver
                        .iter()
                        .map(|d| d.parse())
                        .collect::<Result<_, String>>()
                        .map_err(anyhow::Error::msg)?,
                )
            };
            let files = suite::discover(&default_paths(paths)).map_err(anyhow::Error::msg)?;
            let (scenarios, errs) = suite::load(&files);
            if !errs.is_empty() {
                for e in &errs {
                    eprintln!("{e}");
                }
                return Ok(ExitCode::from(2));
            }
            let mut outcomes: Vec<Outcome> = Vec::new();
            // Backend `vm`: collected here, run in one boot below.
            let mut vm_jobs = Vec::new();
            for s in &scenarios {
                let model = suite::run_model_at(s, only.as_deref(), kernel);
                // At another kernel than the default, each real run makes its own model run.
                let default_kernel = kernel == layerspec_model::KernelVersion::DEFAULT;
                for m in model.iter().filter(|_| !model_only) {
                    for (backend, status) in suite::run_backends(m.driver, &backend) {
                        let o = match status {
                            Status::Skip(_) => Outcome {
                                scenario: m.scenario.clone(),
                                driver: m.driver,
                                backend,
                                result: RunResult {
                                    status,
                                    observation: None,
                                },
                            },
                            _ if backend == "vm" => {
                                vm_jobs.push((s, m.driver));
                                continue;
                            }
                            _ => {
                                let model = Some(&m.result).filter(|_| default_kernel);
                                suite::run_real(s, m.driver, &backend, model)
                            }
                        };
                        outcomes.push(o);
                    }
                }
                if want_model {
                    outcomes.extend(model);
                }
            }
            // The devicemapper base (made at the first real devicemapper run) is not
            // needed any more.
            layerspec_real::remove_devmapper_base();
            outcomes.extend(layerspec::vm::host::run_scenarios(&vm_jobs));
            outcomes.sort_by(|a, b| {
                (&a.scenario, a.driver, &a.backend).cmp(&(&b.scenario, b.driver, &b.backend))
            });
            if json {
                for o in &outcomes {
                    println!("{}", report::json_line(o));
                }
            } else {
                print!("{}", report::table(&outcomes));
            }
            let failed = outcomes
                .iter()
                .any(|o| matches!(o.result.status, Status::Fail(_)));
            Ok(if failed {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}

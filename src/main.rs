//! The `layerspec` command: run, check, claims, report, fuzz.

use anyhow::Result;
use clap::{Parser, Subcommand};
use layerspec::catalogue::Catalogue;
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
    /// Validate scenario files without running them, and their claims against the claims
    /// catalogue (spec/claims.toml). With no paths: all of scenarios/, and also every
    /// catalogue entry must be cited by some scenario.
    Check {
        /// Files or directories (default: scenarios/, checked both ways with the catalogue).
        paths: Vec<PathBuf>,
        /// Another claims catalogue than the one built in (spec/claims.toml).
        #[arg(long)]
        catalogue: Option<PathBuf>,
    },
    /// Print each claim: its statement, sources, kernel range, the scenarios citing it and,
    /// with --results, how their runs went per backend (claims no passing run shows first).
    Claims {
        /// Files or directories (default: scenarios/).
        paths: Vec<PathBuf>,
        /// Outputs of `layerspec run --json` (`-`: standard input); a later row of the same
        /// scenario x driver x backend x kernel replaces an earlier one.
        #[arg(long, num_args = 1..)]
        results: Vec<PathBuf>,
        /// Another claims catalogue than the one built in (spec/claims.toml).
        #[arg(long)]
        catalogue: Option<PathBuf>,
    },
    /// Render outputs of `layerspec run --json` as one self-contained HTML page (or
    /// Markdown): claims and scenarios x (driver, backend, kernel), per-driver totals, every
    /// failure, skip reasons, the kernel-version rules and the claims.
    Report {
        /// Outputs of `layerspec run --json` (`-`: standard input); a later row of the same
        /// scenario x driver x backend x kernel replaces an earlier one.
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        /// Write the report to this file (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
        /// `html` or `md`.
        #[arg(long, value_enum, default_value_t = Format::Html)]
        format: Format,
        /// The scenario files the results came from, for the claims they cite.
        #[arg(long, default_value = "scenarios")]
        scenarios: PathBuf,
        /// Another claims catalogue than the one built in (spec/claims.toml).
        #[arg(long)]
        catalogue: Option<PathBuf>,
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

/// The formats of `layerspec report`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    /// One self-contained HTML page.
    Html,
    /// Markdown.
    Md,
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
        Cmd::Check { paths, catalogue } => {
            // No paths: the whole suite, so the catalogue is checked both ways.
            let complete = paths.is_empty();
            let files = suite::discover(&default_paths(paths)).map_err(anyhow::Error::msg)?;
            let (ok, errs) = suite::load(&files);
            for e in &errs {
                eprintln!("{e}");
            }
            let problems = match Catalogue::load(catalogue.as_deref()) {
                Ok(cat) => layerspec::claims::check(&cat, &ok, complete),
                Err(p) => p,
            };
            for p in &problems {
                eprintln!("{p}");
            }
            println!(
                "{} file(s) valid, {} invalid; {} claim problem(s)",
                ok.len(),
                errs.len(),
                problems.len()
            );
            Ok(if errs.is_empty() && problems.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            })
        }
        Cmd::Claims {
            paths,
            results,
            catalogue,
        } => {
            let files = suite::discover(&default_paths(paths)).map_err(anyhow::Error::msg)?;
            let (ok, errs) = suite::load(&files);
            for e in &errs {
                eprintln!("{e}");
            }
            let Some(cat) = load_catalogue(catalogue.as_deref()) else {
                return Ok(ExitCode::from(2));
            };
            let problems = layerspec::claims::check(&cat, &ok, false);
            for p in &problems {
                eprintln!("{p}");
            }
            let rows = if results.is_empty() {
                None
            } else {
                Some(layerspec::results::read(&results)?)
            };
            print!("{}", layerspec::claims::listing(&cat, &ok, rows.as_deref()));
            Ok(if errs.is_empty() && problems.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            })
        }
        Cmd::Report {
            inputs,
            out,
            format,
            scenarios,
            catalogue,
        } => {
            let rows = layerspec::results::read(&inputs)?;
            let Some(cat) = load_catalogue(catalogue.as_deref()) else {
                return Ok(ExitCode::from(2));
            };
            // The claims each scenario cites; without the files the report has no claims
            // grid rows filled, and says nothing worse.
            let cited_by = match suite::discover(std::slice::from_ref(&scenarios)) {
                Ok(files) => {
                    let (ok, errs) = suite::load(&files);
                    for e in &errs {
                        eprintln!("layerspec report: {e}");
                    }
                    layerspec::claims::cited_by(&ok)
                }
                Err(e) => {
                    eprintln!("layerspec report: no claims per scenario: {e}");
                    Default::default()
                }
            };
            let input = report::grid::Input {
                rows: &rows,
                catalogue: &cat,
                cited_by,
                inputs: inputs.iter().map(|p| p.display().to_string()).collect(),
            };
            let text = match format {
                Format::Html => report::html::render(&input),
                Format::Md => report::markdown::render(&input),
            };
            match out {
                Some(path) => std::fs::write(&path, text)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
                None => print!("{text}"),
            }
            Ok(ExitCode::SUCCESS)
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
                                result: RunResult {
                                    status,
                                    observation: None,
                                },
                                kernel: (!layerspec::vm::runs_in_vm(&backend, m.driver))
                                    .then(suite::running_kernel)
                                    .flatten(),
                                backend,
                            },
                            _ if layerspec::vm::runs_in_vm(&backend, m.driver) => {
                                vm_jobs.push((s, m.driver, backend));
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

/// The claim catalogue (`--catalogue`, or the project's own), or `None` after printing why
/// it cannot be read.
fn load_catalogue(path: Option<&std::path::Path>) -> Option<Catalogue> {
    Catalogue::load(path)
        .map_err(|problems| {
            for p in &problems {
                eprintln!("{p}");
            }
        })
        .ok()
}

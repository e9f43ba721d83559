//! The command line: parse the arguments (`args`), run the command, print
//! its result (`output`, human or `--json`) and map it to an exit code.
//! Each command's work lives elsewhere.

mod args;
mod output;
mod serve;

use std::io::IsTerminal;

use clap::Parser;
use serde_json::json;

use crate::check;
use crate::error::{exit, Error, Result};
use crate::layout::Revision;
use crate::recovery::{self, Selection};
use crate::repair;
use crate::storage::{self, LocalRoot};
use crate::txn::{self, Options};
use crate::workdir;

use args::{Cli, Command, FetchArgs, UploadArgs, VerifyArgs};
use output::{
    print_check, print_completions, print_fetch, print_journals, print_json, print_json_line,
    print_outcome, print_repair, print_verify, report_outcomes,
};

/// Parse the command line, run the command, and return the exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    let output = cli.command.output();
    init_logging(output.map_or(0, |o| o.verbose));
    let json = output.is_some_and(|o| o.json);
    let json_lines = cli.command.json_lines();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("starting the async runtime");
    match runtime.block_on(run_within_timeout(cli.command)) {
        Ok(code) => code,
        Err(err) => {
            if json_lines {
                print_json_line(&error_json(&err));
            } else if json {
                print_json(&error_json(&err));
            }
            eprintln!("alitx: error: {err}");
            err.exit_code()
        }
    }
}

/// What `--json` (and `--json-lines`) prints for a command that failed.
fn error_json(err: &Error) -> serde_json::Value {
    json!({
        "status": "error",
        "error": { "kind": err.kind_name(), "message": err.message },
        "exit_code": err.exit_code(),
    })
}

/// Run the command, stopping it when its `--timeout` passes.
async fn run_within_timeout(command: Command) -> Result<i32> {
    let deadline = command.store().and_then(deadline);
    within_timeout(deadline, run(command)).await
}

/// How long a command on `store` may take (`--timeout`, 0: forever), and
/// the store as its timeout message names it.
fn deadline(store: &args::StoreArgs) -> Option<(std::time::Duration, String)> {
    let described = || storage::describe(&store.remote_store, store.endpoint_url.as_deref());
    (!store.timeout.is_zero()).then(|| (store.timeout, described()))
}

/// `work`, stopped when `deadline` passes.
async fn within_timeout<T>(
    deadline: Option<(std::time::Duration, String)>,
    work: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    let Some((limit, store)) = deadline else {
        return work.await;
    };
    tokio::time::timeout(limit, work).await.unwrap_or_else(|_| {
        Err(Error::store(format!(
            "stopped after --timeout {}s: the command on {store} had not finished; \
             an upload stopped here keeps its journal (the same upload, or `alitx resume`, finishes it)",
            limit.as_secs()
        )))
    })
}

fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    // Colour only for a person at a terminal (https://no-color.org).
    let colour = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    // Only our own events: the SDK's debug logs would show request headers.
    tracing_subscriber::fmt()
        .with_ansi(colour)
        .with_env_filter(tracing_subscriber::EnvFilter::new(format!(
            "warn,alitx={level}"
        )))
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

async fn run(command: Command) -> Result<i32> {
    match command {
        Command::Upload(args) => upload(args).await,
        Command::ServeUploads { .. } => serve::serve_uploads().await,
        Command::Verify(args) => verify(args).await,
        Command::Fetch(args) => fetch(args).await,
        Command::Completions { shell } => {
            print_completions(shell);
            Ok(exit::OK)
        }
        Command::Journals { store, output } => {
            let options = store.options();
            let entries = recovery::list_journals(
                &*store.open_for_reads(recovery::JOURNALS_AT_ONCE).await?,
                &options.journal_prefix,
            )
            .await?;
            print_journals(&entries, output.json);
            Ok(exit::OK)
        }
        Command::Resume {
            store,
            work_dir,
            architecture,
            force,
            journals,
            output,
        } => {
            let options = store.options();
            let selection = Selection {
                ids: &journals,
                architecture: architecture.as_deref(),
                force,
            };
            let print_as_it_ends = |outcome: &recovery::Outcome| {
                if !output.json {
                    print_outcome(outcome);
                }
            };
            let outcomes = recovery::resume(
                store.open_for_reads(recovery::JOURNALS_AT_ONCE).await?,
                &options,
                work_dir.as_deref(),
                &selection,
                &print_as_it_ends,
            )
            .await?;
            Ok(report_outcomes(
                &outcomes,
                output.json,
                "nothing to resume: no abandoned journals",
            ))
        }
        Command::Rollback {
            store,
            force,
            journals,
            output,
        } => {
            let options = store.options();
            let selection = Selection {
                ids: &journals,
                architecture: None,
                force,
            };
            let outcomes = recovery::rollback(
                store.open_for_reads(recovery::JOURNALS_AT_ONCE).await?,
                &options,
                &selection,
            )
            .await?;
            if !output.json {
                outcomes.iter().for_each(print_outcome);
            }
            Ok(report_outcomes(
                &outcomes,
                output.json,
                "nothing to roll back",
            ))
        }
        Command::Check {
            store,
            scan,
            output,
        } => {
            let options = store.options();
            let report = check::scan(
                &*store.open_for_reads(scan.concurrency as usize).await?,
                &scan.options(&options.journal_prefix),
            )
            .await?;
            if output.json {
                print_json(&report);
            } else {
                print_check(&report, scan.package.as_deref());
            }
            Ok(if report.clean {
                exit::OK
            } else {
                exit::NEEDS_REPAIR
            })
        }
        Command::Repair {
            store,
            scan,
            dry_run,
            unpublish,
            ignore_dependents,
            version,
            revision,
            output,
        } => {
            let options = store.options();
            let backend = store.open_for_reads(scan.concurrency as usize).await?;
            let found = check::scan(&*backend, &scan.options(&options.journal_prefix)).await?;
            let report = match (unpublish, scan.package.clone(), version, revision) {
                (true, Some(package), Some(version), Some(revision)) => {
                    let target = repair::Unpublish {
                        package,
                        version,
                        revision,
                        ignore_dependents,
                        concurrency: scan.concurrency as usize,
                    };
                    repair::unpublish(backend, found, &target, &options, dry_run).await?
                }
                _ => {
                    repair::repair(backend, found, &options, dry_run, scan.concurrency as usize)
                        .await?
                }
            };
            if output.json {
                print_json(&report);
            } else {
                print_repair(&report, scan.package.as_deref());
            }
            Ok(if report.first_failure().is_some() {
                exit::ERROR
            } else if report.left_over {
                exit::NEEDS_REPAIR
            } else {
                exit::OK
            })
        }
    }
}

async fn upload(args: UploadArgs) -> Result<i32> {
    let progress = !args.output.json && std::io::stderr().is_terminal();
    let (local, options) = upload_plan(&args, progress)?;
    let store = args.store.open(LocalRoot::MayCreate).await?;
    let report = txn::upload(store, local, &options).await?;
    if args.output.json {
        print_json(&report);
    } else {
        println!("{}", recovery::summary(&report));
    }
    Ok(exit::OK)
}

/// The revision `args` names, read from its work dir, and the upload's
/// options: what an upload checks before it opens the store.
fn upload_plan(args: &UploadArgs, progress: bool) -> Result<(workdir::LocalRevision, Options)> {
    let revision = Revision::new(
        &args.architecture,
        &args.package,
        &args.version,
        &args.revision,
        &args.hash,
    )?;
    let local = workdir::read_revision(&args.work_dir, revision)?;
    let options = Options {
        part_size: (args.part_size << 20) as usize,
        concurrency: args.concurrency as usize,
        link_concurrency: args.link_concurrency as usize,
        adopt_after: args.adopt_after,
        progress,
        ..args.store.options()
    };
    Ok((local, options))
}

async fn fetch(args: FetchArgs) -> Result<i32> {
    let options = args.options();
    let store = args.store.open_for_reads(options.concurrency).await?;
    let report = crate::fetch::fetch_each(store, args.packages, &options, |p| {
        // What went wrong goes to stderr in every mode: a build log shows it.
        for reason in &p.reasons {
            eprintln!("alitx: {}: {reason}", p.package);
        }
        if args.json_lines {
            print_json_line(p);
        }
    })
    .await?;
    if args.json_lines {
        let mut end = serde_json::to_value(&report).expect("the report serialises");
        end.as_object_mut()
            .expect("the report is an object")
            .remove("packages");
        print_json_line(&end);
    } else if args.output.json {
        print_json(&report);
    } else {
        print_fetch(&report);
    }
    Ok(if report.summary.corrupt > 0 {
        exit::CORRUPT
    } else if report.summary.failed > 0 {
        exit::ERROR
    } else {
        exit::OK
    })
}

async fn verify(args: VerifyArgs) -> Result<i32> {
    let options = args.options();
    let report =
        crate::verify::verify(args.store.open(LocalRoot::MustExist).await?, &options).await?;
    if args.output.json {
        print_json(&report);
    } else {
        print_verify(&report, &args.store.remote_store);
    }
    Ok(if report.summary.corrupt > 0 {
        exit::CORRUPT
    } else if report.summary.unreadable > 0 {
        exit::ERROR
    } else {
        exit::OK
    })
}

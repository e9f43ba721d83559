//! `alitx serve-uploads`: the uploads of a whole build in one process, so
//! that each store is opened once and its connections (TCP and TLS) serve
//! every upload. Each upload is exactly `alitx upload`'s: the same checks,
//! the same transaction, the same report; only the process outlives it.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::sync::Arc;

use clap::Parser;

use super::args::{Cli, Command, UploadArgs};
use super::{deadline, error_json, upload_plan, within_timeout};
use crate::error::{exit, Error, Result};
use crate::journal::Journal;
use crate::storage::{Connections, LocalRoot, Store};
use crate::txn::{self, Bookkeeping, Finishers, Report};

/// Stores opened so far, by `--remote-store` and `--endpoint-url`.
type Stores = HashMap<(String, Option<String>), Arc<dyn Store>>;

/// Answer each line of standard input with one line of standard output,
/// until the input ends. Each upload is answered once its revision is
/// published; its journal's bookkeeping goes on meanwhile (see
/// [`Bookkeeping`]) and is over before the process ends.
pub(super) async fn serve_uploads() -> Result<i32> {
    let finishers = Finishers::default();
    let served = serve_lines(&finishers).await;
    finishers.wait(None).await;
    served
}

async fn serve_lines(finishers: &Finishers) -> Result<i32> {
    let mut stores = Stores::new();
    let mut input = std::io::stdin().lock();
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = input
            .read_until(b'\n', &mut line)
            .map_err(|e| Error::io("reading standard input", e))?;
        if read == 0 {
            return Ok(exit::OK);
        }
        if line.trim_ascii().is_empty() {
            continue;
        }
        let answer = match serve_one(&line, &mut stores, finishers).await {
            Ok(report) => serde_json::to_value(&report).expect("reports serialise"),
            Err(err) => error_json(&err),
        };
        let mut out = std::io::stdout().lock();
        writeln!(out, "{answer}")
            .and_then(|_| out.flush())
            .map_err(|e| Error::io("writing standard output", e))?;
    }
}

/// One upload, from its line of `alitx upload` arguments.
async fn serve_one(line: &[u8], stores: &mut Stores, finishers: &Finishers) -> Result<Report> {
    let args = parse_upload(line)?;
    within_timeout(deadline(&args.store), async {
        let (local, mut options) = upload_plan(&args, false)?;
        options.bookkeeping = Bookkeeping::Background(finishers.clone());
        finishers
            .wait(Some(&Journal::key_of(
                &options.journal_prefix,
                &local.revision,
            )))
            .await;
        let key = (
            args.store.remote_store.clone(),
            args.store.endpoint_url.clone(),
        );
        let store = match stores.get(&key) {
            Some(store) => store.clone(),
            None => {
                // Kept for the whole build: one connection per request in flight.
                let store = args
                    .store
                    .open_with(LocalRoot::MayCreate, Connections::OnePerRequest)
                    .await?;
                stores.insert(key, store.clone());
                store
            }
        };
        txn::upload(store, local, &options).await
    })
    .await
}

/// The `alitx upload` arguments a line holds, checked as the command line
/// checks them.
fn parse_upload(line: &[u8]) -> Result<UploadArgs> {
    let line = std::str::from_utf8(line).map_err(|e| {
        Error::input(format!(
            "a line of serve-uploads' input is not UTF-8 ({e}): it must be a JSON array of `alitx upload` arguments"
        ))
    })?;
    let words: Vec<String> = serde_json::from_str(line).map_err(|e| {
        Error::input(format!(
            "each line of serve-uploads' input must be a JSON array of `alitx upload` arguments \
             (e.g. [\"--work-dir\", \"sw\", \"--architecture\", ...]): {e}"
        ))
    })?;
    let command_line = ["alitx", "upload"]
        .map(String::from)
        .into_iter()
        .chain(words);
    match Cli::try_parse_from(command_line) {
        Ok(Cli {
            command: Command::Upload(args),
        }) => Ok(args),
        Ok(_) => unreachable!("the command is always upload"),
        Err(e) => Err(Error::input(format!(
            "bad upload arguments: {}",
            e.render().to_string().trim()
        ))),
    }
}

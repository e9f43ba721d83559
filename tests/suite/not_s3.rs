//! alitx in front of something that is not S3 (`tests/common/not_s3.rs`):
//! a credential proxy refusing a stale token with 401, or unavailable (503)
//! after it restarted without its keys. The message says the status, who
//! answered, the reason it gave and what to check, and no secret.

use crate::common::not_s3::{NotS3, SERVER};
use crate::common::*;

const ACCESS_KEY: &str = "AKIDPROXIEDTEST";
const SECRET: &str = "s3cr3t-behind-the-proxy";

#[test]
fn an_answer_that_is_not_s3_shows_its_reason_and_a_hint() {
    let wd = WorkDir::chain(1, 0);
    let cases = [
        (
            401,
            "gate token expired, fetch a new one",
            "the credentials were refused by something that is not S3",
        ),
        (
            503,
            "upstream credentials not loaded",
            "the service in front of the store is unavailable",
        ),
    ];
    for (status, reason, hint) in cases {
        let server = NotS3::start(status, &format!("{{\"error\": \"{reason}\"}}\n"));
        let env = [
            ("AWS_ENDPOINT_URL", server.url()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_string()),
            ("AWS_SECRET_ACCESS_KEY", SECRET.to_string()),
        ];
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        for (command, argv) in [
            ("check", on_store("check", "b3://builds", &[])),
            ("upload", wd.upload_args_to(0, "b3://builds::rw")),
        ] {
            let out = alitx_env(&argv, &env);
            let what = format!("{command} against HTTP {status}");
            assert_exit(&out, 1);
            let message = stderr(&out);
            for expected in [&format!("HTTP {status}"), SERVER, reason, hint] {
                assert!(
                    message.contains(expected),
                    "{what}: {expected:?} missing from: {message}"
                );
            }
            for secret in [SECRET, ACCESS_KEY, "Signature=", "Authorization"] {
                assert!(
                    !message.contains(secret),
                    "{what}: {secret:?} in: {message}"
                );
            }
        }
        if status == 503 {
            // Each retry's log line says why too.
            let out = alitx_env(&on_store("check", "b3://builds", &["-v"]), &env);
            let log = stderr(&out);
            let retries: Vec<&str> = log.lines().filter(|l| l.contains("retrying S3")).collect();
            assert!(
                !retries.is_empty() && retries.iter().all(|l| l.contains(reason)),
                "{log}"
            );
        }
    }
}

//! The command line itself, apart from any one command's work: shell
//! completions, usage errors, and what reaches a terminal or a log.

use crate::common::*;

#[test]
fn completions_cover_every_command_and_flag_in_bash_zsh_and_fish() {
    for (shell, marker) in [
        ("bash", "complete -F _alitx"),
        ("zsh", "#compdef alitx"),
        ("fish", "complete -c alitx"),
    ] {
        let out = alitx(&args(&["completions", shell]));
        assert_exit(&out, 0);
        let script = String::from_utf8(out.stdout).unwrap();
        assert!(script.contains(marker), "{shell}: no {marker:?}");
        for word in [
            "upload",
            "journals",
            "resume",
            "rollback",
            "check",
            "repair",
            "completions",
            "remote-store",
            "dry-run",
            "min-age",
        ] {
            assert!(script.contains(word), "{shell} completion lacks {word}");
        }
    }
    let out = alitx(&args(&["completions", "tcsh"]));
    assert_exit(&out, 2);
    assert!(
        stderr(&out).contains("invalid value 'tcsh'"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_local_store_that_does_not_exist_is_an_error_naming_it() {
    let parent = tempfile::tempdir().unwrap();
    let missing = parent.path().join("stroe");
    let spec = missing.display().to_string();
    for command in [
        args(&["check", "--remote-store", &spec]),
        args(&["journals", "--remote-store", &spec]),
        args(&["resume", "--remote-store", &spec]),
        args(&["rollback", "--remote-store", &spec, "slc9_x86-64/zlib-v1-1"]),
        args(&["repair", "--remote-store", &spec]),
        args(&[
            "repair",
            "--remote-store",
            &format!("file://{spec}"),
            "--dry-run",
        ]),
    ] {
        let out = alitx(&command);
        assert_exit(&out, 1);
        assert!(
            stderr(&out).contains(&format!(
                "the local store {spec} does not exist: check --remote-store"
            )),
            "{command:?}: {}",
            stderr(&out)
        );
        assert!(!missing.exists(), "{command:?} created {spec}");
    }
}

#[test]
fn upload_starts_a_new_local_store_only_for_a_url_in_an_existing_directory() {
    let wd = WorkDir::chain(1, 0);
    let parent = tempfile::tempdir().unwrap();
    let upload_to = |store: &std::path::Path| {
        alitx(&wd.upload_args_to(0, &format!("file://{}", store.display())))
    };

    let deep = parent.path().join("no-such-dir/store");
    let out = upload_to(&deep);
    assert_exit(&out, 1);
    assert!(
        stderr(&out).contains(&format!(
            "the local store {} does not exist, nor does {}",
            deep.display(),
            parent.path().join("no-such-dir").display()
        )),
        "{}",
        stderr(&out)
    );
    assert!(!parent.path().join("no-such-dir").exists());

    // A bare path starts no store: it may be a bucket's name.
    let new = parent.path().join("store");
    let out = alitx(&wd.upload_args_to(0, &new.display().to_string()));
    assert_exit(&out, 1);
    assert!(
        stderr(&out).contains("to start a new local store, name it as file://"),
        "{}",
        stderr(&out)
    );
    assert!(!new.exists());

    let out = upload_to(&new);
    assert_exit(&out, 0);
    assert!(
        stderr(&out).contains(&format!("started a new local store in {}", new.display())),
        "{}",
        stderr(&out)
    );
    let tarball = new.join(wd.pkgs[0].revision().store_key());
    assert_eq!(
        std::fs::read(tarball).unwrap(),
        std::fs::read(wd.tarball_path(0)).unwrap()
    );

    // The second upload finds the store, by URL or bare path: nothing to
    // say about it.
    let out = upload_to(&new);
    assert_exit(&out, 0);
    let out = alitx(&wd.upload_args_to(0, &new.display().to_string()));
    assert_exit(&out, 0);
    assert!(
        !stderr(&out).contains("new local store"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn usage_errors_exit_2_and_the_help_says_so() {
    let out = alitx(&args(&["upload", "--no-such-flag"]));
    assert_exit(&out, 2);
    assert!(stderr(&out).contains("--no-such-flag"), "{}", stderr(&out));
    let help = alitx(&args(&["--help"]));
    assert_exit(&help, 0);
    assert!(String::from_utf8_lossy(&help.stdout).contains("2 usage (a bad\ncommand line)"));
}

/// Log lines are coloured for a person at a terminal, unless NO_COLOR is
/// set; never in a pipe (tests/timeouts.rs checks that). `script` gives
/// alitx a terminal.
#[test]
fn log_colour_only_on_a_terminal_without_no_color() {
    let wd = WorkDir::chain(1, 0);
    for (no_color, coloured) in [(None, true), (Some("1"), false), (Some(""), true)] {
        let store = tempfile::tempdir().unwrap();
        let mut upload = wd.upload_args_to(0, &store.path().display().to_string());
        upload.push("-v".into());
        let command = std::iter::once(env!("CARGO_BIN_EXE_alitx").to_string())
            .chain(upload)
            .collect::<Vec<_>>()
            .join(" ");
        let mut script = std::process::Command::new("script");
        script.args(["-qec", &command, "/dev/null"]);
        match no_color {
            Some(value) => script.env("NO_COLOR", value),
            None => script.env_remove("NO_COLOR"),
        };
        let out = script.output().expect("running `script` (util-linux)");
        assert_exit(&out, 0);
        let terminal = String::from_utf8_lossy(&out.stdout);
        assert!(terminal.contains("INFO"), "{no_color:?}: {terminal}");
        assert_eq!(
            terminal.contains("\u{1b}["),
            coloured,
            "NO_COLOR={no_color:?}: {terminal}"
        );
    }
}

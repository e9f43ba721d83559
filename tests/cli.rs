//! The command line itself, apart from any one command's work: shell
//! completions, usage errors, and what reaches a terminal or a log.

mod common;

use common::*;

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

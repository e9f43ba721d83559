//! What repair did, or in a dry run would do: one action per planned step,
//! and the dry run a flag of the whole report. The JSON names a dry run
//! gives (`would-delete`, `would_delete`, ...) are a contract; they are
//! chosen here, at serialisation, and nowhere else.

use serde::ser::SerializeStruct;
use serde::{Serialize, Serializer};

use crate::check::{CheckReport, RevisionReport, State};

/// What repair did (or would do) to one revision.
#[derive(Debug)]
pub struct Action {
    /// `<arch>/<tarball>`
    pub revision: String,
    pub state: State,
    pub action: ActionKind,
    pub message: String,
    /// Keys deleted (or that would be); for a failed repair, those deleted
    /// before it failed.
    pub keys: Vec<String>,
    /// Links re-created (or that would be).
    pub restored: Vec<String>,
}

/// What repair did to one revision: one kind per step of the plan, and
/// what execution can add (`Failed`, `LeftAlone` when the store changed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionKind {
    Deleted,
    Restored,
    RolledBack,
    LeftAlone,
    Failed,
    Unpublished,
}

impl ActionKind {
    /// The name the output gives it, in a real run or a dry run.
    pub fn name(self, dry_run: bool) -> &'static str {
        match (self, dry_run) {
            (ActionKind::Deleted, false) => "deleted",
            (ActionKind::Deleted, true) => "would-delete",
            (ActionKind::Restored, false) => "restored",
            (ActionKind::Restored, true) => "would-restore",
            (ActionKind::RolledBack, false) => "rolled-back",
            (ActionKind::RolledBack, true) => "would-roll-back",
            (ActionKind::Unpublished, false) => "unpublished",
            (ActionKind::Unpublished, true) => "would-unpublish",
            (ActionKind::LeftAlone, _) => "left-alone",
            (ActionKind::Failed, _) => "failed",
        }
    }
}

impl Action {
    pub(super) fn new(revision: &RevisionReport, action: ActionKind, message: String) -> Self {
        Action {
            revision: revision.id(),
            state: revision.state,
            action,
            message,
            keys: Vec::new(),
            restored: Vec::new(),
        }
    }

    pub(super) fn with_keys(mut self, keys: Vec<String>) -> Self {
        self.keys = keys;
        self
    }
}

/// A stale staged upload repair aborts (or would abort).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Upload {
    pub key: String,
    pub upload_id: String,
}

#[derive(Debug)]
pub struct RepairReport {
    pub dry_run: bool,
    /// `repair --unpublish`, which re-creates nothing: its JSON has no
    /// `restored`.
    pub unpublish: bool,
    pub store: String,
    pub actions: Vec<Action>,
    pub aborted_uploads: Vec<Upload>,
    /// Whether something found is still there for a later run or a person:
    /// a recent partial revision, a needed tarball, an invalid journal, a
    /// failure.
    pub left_over: bool,
    pub check: CheckReport,
}

impl RepairReport {
    /// Every key deleted (or that would be), in order.
    pub fn deleted(&self) -> Vec<&str> {
        self.actions
            .iter()
            .flat_map(|a| a.keys.iter().map(String::as_str))
            .collect()
    }

    /// Every link re-created (or that would be).
    pub fn restored(&self) -> Vec<&str> {
        self.actions
            .iter()
            .flat_map(|a| a.restored.iter().map(String::as_str))
            .collect()
    }

    /// The first action that failed: the command then exits 1.
    pub fn first_failure(&self) -> Option<&Action> {
        self.actions.iter().find(|a| a.action == ActionKind::Failed)
    }
}

/// An action as the JSON shows it.
#[derive(Serialize)]
struct ActionJson<'a> {
    revision: &'a str,
    state: State,
    action: &'static str,
    message: &'a str,
    keys: &'a [String],
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    restored: &'a [String],
}

impl Serialize for RepairReport {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let name = |done, would| if self.dry_run { would } else { done };
        let actions: Vec<ActionJson> = self
            .actions
            .iter()
            .map(|a| ActionJson {
                revision: &a.revision,
                state: a.state,
                action: a.action.name(self.dry_run),
                message: &a.message,
                keys: &a.keys,
                restored: &a.restored,
            })
            .collect();
        let mut out = serializer.serialize_struct("RepairReport", 8)?;
        out.serialize_field("dry_run", &self.dry_run)?;
        out.serialize_field("store", &self.store)?;
        out.serialize_field("actions", &actions)?;
        out.serialize_field(name("deleted", "would_delete"), &self.deleted())?;
        if !self.unpublish {
            out.serialize_field(name("restored", "would_restore"), &self.restored())?;
        }
        out.serialize_field(
            name("aborted_uploads", "would_abort_uploads"),
            &self.aborted_uploads,
        )?;
        out.serialize_field("left_over", &self.left_over)?;
        out.serialize_field("check", &self.check)?;
        out.end()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;

    /// The JSON names of repair's actions are a contract.
    #[test]
    fn action_names_are_pinned() {
        let kinds = [
            ActionKind::Deleted,
            ActionKind::Restored,
            ActionKind::RolledBack,
            ActionKind::LeftAlone,
            ActionKind::Failed,
            ActionKind::Unpublished,
        ];
        let names = |dry_run| kinds.map(|kind| kind.name(dry_run));
        assert_eq!(
            names(false),
            [
                "deleted",
                "restored",
                "rolled-back",
                "left-alone",
                "failed",
                "unpublished"
            ]
        );
        assert_eq!(
            names(true),
            [
                "would-delete",
                "would-restore",
                "would-roll-back",
                "left-alone",
                "failed",
                "would-unpublish"
            ]
        );
    }

    fn report(dry_run: bool, unpublish: bool) -> RepairReport {
        let check = CheckReport {
            clean: false,
            store: "b3://bucket".into(),
            architectures: Vec::new(),
            revisions: Vec::new(),
            journals: Vec::new(),
            stale_uploads: Vec::new(),
            summary: Default::default(),
        };
        let action = |kind, keys: &[&str], restored: &[&str]| Action {
            revision: "arch/p-1-1.arch.tar.gz".into(),
            state: State::Partial,
            action: kind,
            message: "why".into(),
            keys: keys.iter().map(ToString::to_string).collect(),
            restored: restored.iter().map(ToString::to_string).collect(),
        };
        RepairReport {
            dry_run,
            unpublish,
            store: check.store.clone(),
            actions: vec![
                action(ActionKind::Deleted, &["a", "b"], &[]),
                action(ActionKind::LeftAlone, &["c"], &["c"]),
                action(ActionKind::Restored, &[], &["d"]),
            ],
            aborted_uploads: vec![Upload {
                key: "TARS/x".into(),
                upload_id: "u1".into(),
            }],
            left_over: true,
            check,
        }
    }

    /// The field names a dry run and a real run give, each once, in the
    /// order they always had; `--unpublish` has no `restored`.
    #[test]
    fn a_dry_run_names_its_fields_would() {
        for (dry_run, unpublish, fields, actions) in [
            (
                false,
                false,
                ["deleted", "restored", "aborted_uploads"],
                ["deleted", "left-alone", "restored"],
            ),
            (
                true,
                false,
                ["would_delete", "would_restore", "would_abort_uploads"],
                ["would-delete", "left-alone", "would-restore"],
            ),
        ] {
            let text = serde_json::to_string(&report(dry_run, unpublish)).unwrap();
            let value: Value = serde_json::from_str(&text).unwrap();
            let mut expected = vec!["dry_run", "store", "actions"];
            expected.extend(fields);
            expected.extend(["left_over", "check"]);
            // The report's own fields: the last of each name before `check`.
            let own = &text[..text.rfind("\"check\":").unwrap() + 1];
            let at: Vec<usize> = expected
                .iter()
                .map(|field| own.rfind(&format!("\"{field}\":")).unwrap_or(own.len()))
                .collect();
            assert!(at.is_sorted(), "dry run {dry_run}: {text}");
            assert_eq!(value.as_object().unwrap().len(), expected.len(), "{text}");
            assert_eq!(value[fields[0]], json!(["a", "b", "c"]));
            assert_eq!(value[fields[1]], json!(["c", "d"]));
            assert_eq!(
                value[fields[2]],
                json!([{"key": "TARS/x", "upload_id": "u1"}])
            );
            let names: Vec<&Value> = value["actions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| &a["action"])
                .collect();
            assert_eq!(names, actions);
            assert_eq!(value["actions"][0].get("restored"), None);
            assert_eq!(value["actions"][1]["restored"], json!(["c"]));
        }
        let unpublish = serde_json::to_value(report(true, true)).unwrap();
        assert_eq!(unpublish.get("would_restore"), None);
        assert_eq!(unpublish["would_delete"], json!(["a", "b", "c"]));
    }
}

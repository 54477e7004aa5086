//! The one subject scheme of the bus.
//!
//! | what | subject |
//! |---|---|
//! | command | `ambient.cmd.<project>.<kind>.<action>` |
//! | result of a command | `ambient.result.<project>.<commandId>` |
//! | status of an object | `ambient.status.<project>.<kind>.<name>` |
//! | a session's messages | `ambient.msg.<project>.<session>` |
//!
//! Every token is a DNS-1123 label or a UUID, so no token ever contains `.`, `*`, `>` or
//! whitespace.

use uuid::Uuid;

use crate::commands::{Command, CommandType};
use crate::names::{ProjectName, SessionName, ValidationError, check_dns1123_label};
use crate::status::{StatusEvent, StatusKind};

/// Prefix of every command subject.
pub const COMMANDS: &str = "ambient.cmd";
/// Prefix of every result subject.
pub const RESULTS: &str = "ambient.result";
/// Prefix of every status subject.
pub const STATUS: &str = "ambient.status";
/// Prefix of every session-message subject.
pub const MESSAGES: &str = "ambient.msg";

// The subjects of the events themselves are defined here, next to the scheme, so that the
// event modules need not know it.
impl Command {
    /// The NATS subject it is published on: `ambient.cmd.<project>.<kind>.<action>`.
    pub fn subject(&self) -> String {
        command(&self.project, self.body.command_type())
    }
}

impl StatusEvent {
    /// The subject: `ambient.status.<project>.<kind>.<name>`.
    pub fn subject(&self) -> Result<String, ValidationError> {
        status(&self.project, self.body.kind(), &self.name)
    }
}

/// `ambient.cmd.<project>.<kind>.<action>`.
pub fn command(project: &ProjectName, ty: CommandType) -> String {
    format!("{COMMANDS}.{project}.{}.{}", ty.kind().as_str(), ty.action())
}

/// `ambient.result.<project>.<commandId>`.
pub fn result(project: &ProjectName, command_id: Uuid) -> String {
    format!("{RESULTS}.{project}.{command_id}")
}

/// `ambient.status.<project>.<kind>.<name>`; `name` must be a DNS-1123 label (session, key id,
/// permission object name, project name).
pub fn status(project: &ProjectName, kind: StatusKind, name: &str) -> Result<String, ValidationError> {
    check_dns1123_label("name", name, 63)?;
    Ok(format!("{STATUS}.{project}.{}.{name}", kind.as_str()))
}

/// Every status event of one project: `ambient.status.<project>.>`.
pub fn status_of_project(project: &ProjectName) -> String {
    format!("{STATUS}.{project}.>")
}

/// Every status event of one session: `ambient.status.<project>.session.<session>`.
pub fn status_of_session(project: &ProjectName, session: &SessionName) -> String {
    format!("{STATUS}.{project}.session.{session}")
}

/// `ambient.msg.<project>.<session>`.
pub fn messages(project: &ProjectName, session: &SessionName) -> String {
    format!("{MESSAGES}.{project}.{session}")
}

/// The parts of a command subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandSubject {
    /// Project token.
    pub project: ProjectName,
    /// The command type the kind and action tokens name.
    pub ty: CommandType,
}

/// Parses a command subject, either as published (`ambient.cmd.<p>.<kind>.<action>`) or as
/// stored in its partition (`ambient.cmd.<n>.<p>.<kind>.<action>`, see [`crate::streams`]).
pub fn parse_command(subject: &str) -> Option<CommandSubject> {
    let rest = subject.strip_prefix(COMMANDS)?.strip_prefix('.')?;
    let tokens: Vec<&str> = rest.split('.').collect();
    let (project, kind, action) = match tokens.as_slice() {
        [p, k, a] => (*p, *k, *a),
        [n, p, k, a] if n.bytes().all(|b| b.is_ascii_digit()) => (*p, *k, *a),
        _ => return None,
    };
    let project = ProjectName::new(project).ok()?;
    let ty = CommandType::ALL.iter().copied().find(|t| t.kind().as_str() == kind && t.action() == action)?;
    Some(CommandSubject { project, ty })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_subjects_round_trip() {
        let p = ProjectName::new("team-a").unwrap();
        for &ty in CommandType::ALL {
            let s = command(&p, ty);
            assert_eq!(parse_command(&s), Some(CommandSubject { project: p.clone(), ty }), "{s}");
            let stored = s.replacen("ambient.cmd.", "ambient.cmd.7.", 1);
            assert_eq!(parse_command(&stored).map(|c| c.ty), Some(ty));
        }
        assert_eq!(parse_command("ambient.cmd.team-a.session.explode"), None);
        assert_eq!(parse_command("ambient.cmd.Team.session.create"), None);
    }

    #[test]
    fn status_names_are_tokens() {
        let p = ProjectName::new("p").unwrap();
        assert!(status(&p, StatusKind::Session, "a.b").is_err());
        assert_eq!(status(&p, StatusKind::Session, "s1").unwrap(), "ambient.status.p.session.s1");
    }
}

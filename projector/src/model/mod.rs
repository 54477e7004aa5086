//! What the projector keeps of each watched object (compact records, never a secret), the
//! public views computed from them, and the diff of a view against the last projected one.
//!
//! Everything here is pure: the watch side converts Kubernetes objects into [`Rec`]s, the
//! projection loop asks [`desired_for_project`] what the read model should hold and [`diff`]
//! which status events bring a consumer from the last projected state to it.
//!
//! By what each part owns, each using only those before it: [`meta`] (an object's identity),
//! [`runner`] and [`records`] (what is kept of each watched object), [`keys`] (the read model's
//! keys), [`views`] (its values), [`state`] (the watched objects), [`desired`] (what the read
//! model should hold) and [`diff`] (the events from one to the other).

pub mod desired;
pub mod diff;
pub mod keys;
pub mod meta;
pub mod records;
pub mod runner;
pub mod state;
pub mod views;

pub use desired::*;
pub use diff::*;
pub use events::views::to_chrono;
pub use keys::*;
pub use meta::*;
pub use records::*;
pub use state::*;
pub use views::*;

#[cfg(test)]
mod tests;

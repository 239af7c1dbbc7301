//! The data model every reader and format produces and every template consumes: a conversation (single-turn
//! instructions are one user turn and one assistant turn) with its provenance.

use serde::Serialize;
use std::fmt;
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Turn {
    pub role: Role,
    pub content: String,
}

/// One training example before templating.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Conversation {
    pub turns: Vec<Turn>,
}

/// Where an example came from: the source it was read from, its language and origin (native, translated,
/// round-trip, or any label), and the id that aligns it with its counterparts in other languages.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Provenance {
    pub source: String,
    pub language: Option<String>,
    pub origin: Option<String>,
    /// The translation engine, when the origin is a translation and it is known (e.g. "google", "cohere").
    pub engine: Option<String>,
    /// The record's id in its file (alignment key across languages), if it has one.
    pub source_id: Option<String>,
}

/// The instruction and input of a single-turn record kept apart, because the alpaca template renders them in
/// separate sections (formats without an input field give an empty one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AlpacaFields {
    pub instruction: String,
    pub input: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Record {
    pub conversation: Conversation,
    pub alpaca: Option<AlpacaFields>,
    pub provenance: Provenance,
    pub location: Location,
}

/// A place in an input file, for error messages: line for JSON/JSONL, row for parquet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Location {
    pub file: PathBuf,
    pub line: Option<u64>,
    pub row: Option<u64>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(l) = self.line {
            write!(f, ":{l}")?;
        }
        if let Some(r) = self.row {
            write!(f, " row {r}")?;
        }
        Ok(())
    }
}

//! Acknowledgements: a person saying "handled" about an open episode, with an optional note.
//! Published as Avro records (`schemas/acknowledgement.avsc`, registered under
//! `<topic>-value` like the events) on their own topic, keyed by episode id, so that every
//! console replica, `vigil alerts` and outside subscribers see them. The first acknowledgement
//! of an episode counts; later ones (another replica, a double click) change nothing: readers
//! deduplicate by episode id.

use serde::{Deserialize, Serialize};

/// Longest note accepted, in characters.
pub const MAX_NOTE_CHARS: usize = 500;

/// Largest acknowledgement form accepted, in bytes (the note, the token, the encoding).
pub const MAX_FORM_BYTES: usize = 8 * 1024;

/// One acknowledgement, as on the topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Acknowledgement {
    /// Unique per acknowledgement (random): tells a repeat from a replay.
    pub ack_id: String,
    /// The episode acknowledged.
    pub episode_id: String,
    /// The episode's site, so that subscribers can route and filter without the events.
    pub site: String,
    /// The episode's camera, for readable notifications.
    pub camera: String,
    /// The episode's rule, for readable notifications.
    pub rule: String,
    /// Who acknowledged.
    pub user: String,
    /// What they said, if anything ([`MAX_NOTE_CHARS`] at most).
    pub note: Option<String>,
    /// Wall-clock time of the acknowledgement (epoch ms).
    pub acked_at: i64,
    /// The console replica that took it.
    pub console: String,
}

/// Checks a note from a form: trimmed, empty means none; too long or with control characters
/// (other than line breaks and tabs) is refused.
pub fn clean_note(raw: Option<&str>) -> Result<Option<String>, String> {
    let Some(raw) = raw else { return Ok(None) };
    let note = raw.trim();
    if note.is_empty() {
        return Ok(None);
    }
    let chars = note.chars().count();
    if chars > MAX_NOTE_CHARS {
        return Err(format!(
            "the note has {chars} characters; at most {MAX_NOTE_CHARS}"
        ));
    }
    if note
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
    {
        return Err("the note holds control characters".into());
    }
    Ok(Some(note.to_string()))
}

/// One readable line per acknowledgement (for `vigil alerts`).
pub fn describe(a: &Acknowledgement) -> String {
    let mut s = format!(
        "ACKED    site={} camera={} rule={} episode={} by={}",
        a.site,
        a.camera,
        a.rule,
        a.episode_id.chars().take(12).collect::<String>(),
        a.user
    );
    if let Some(n) = &a.note {
        s.push_str(&format!(" note={n:?}"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::avro::{Codec, ACKNOWLEDGEMENT};

    #[test]
    fn notes_are_bounded_and_printable() {
        assert_eq!(clean_note(None), Ok(None));
        assert_eq!(clean_note(Some("  ")), Ok(None));
        assert_eq!(
            clean_note(Some(" mask handed out ")),
            Ok(Some("mask handed out".into()))
        );
        assert!(clean_note(Some(&"é".repeat(MAX_NOTE_CHARS))).is_ok());
        assert!(clean_note(Some(&"é".repeat(MAX_NOTE_CHARS + 1))).is_err());
        assert!(clean_note(Some("a\u{0}b")).is_err());
        assert!(clean_note(Some("line\nbreak")).is_ok());
    }

    #[test]
    fn acknowledgements_round_trip_in_avro() {
        let a = Acknowledgement {
            ack_id: "a1".into(),
            episode_id: "ep".into(),
            site: "site-001".into(),
            camera: "cam-1".into(),
            rule: "mask_required".into(),
            user: "ana".into(),
            note: Some("done".into()),
            acked_at: 1_776_600_000_000,
            console: "host/1".into(),
        };
        let c: Codec<Acknowledgement> = Codec::new(&ACKNOWLEDGEMENT);
        let bytes = c.encode(&a).unwrap();
        assert_eq!(c.decode(&bytes).unwrap(), a);
        assert!(describe(&a).contains("by=ana"));
    }
}

//! JSON files users hand the trainer. A leading UTF-8 byte-order mark (what Windows editors and some exporters
//! write) is accepted, as pandas and Hugging Face datasets accept it.

use serde::de::DeserializeOwned;

/// The UTF-8 byte-order mark.
pub const BOM: &[u8] = b"\xEF\xBB\xBF";

/// `text` without a leading byte-order mark.
pub fn strip_bom(text: &str) -> &str {
    text.strip_prefix('\u{feff}').unwrap_or(text)
}

/// `bytes` without a leading byte-order mark.
pub fn strip_bom_bytes(bytes: &[u8]) -> &[u8] {
    bytes.strip_prefix(BOM).unwrap_or(bytes)
}

/// `serde_json::from_str` that accepts a leading byte-order mark.
pub fn from_str<T: DeserializeOwned>(text: &str) -> serde_json::Result<T> {
    serde_json::from_str(strip_bom(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leading_bom_is_skipped_and_nothing_else() {
        let v: serde_json::Value = from_str("\u{feff}{\"a\": 1}").unwrap();
        assert_eq!(v["a"], 1);
        assert!(from_str::<serde_json::Value>("{\"a\": \"\u{feff}\"}").unwrap()["a"] == "\u{feff}");
        assert!(from_str::<serde_json::Value>(" \u{feff}{}").is_err());
        assert_eq!(strip_bom_bytes(b"\xEF\xBB\xBF[1]"), b"[1]");
        assert_eq!(strip_bom_bytes(b"\xEF\xBB[1]"), b"\xEF\xBB[1]");
    }
}

//! `rushes search` as text: each asset with its frame rate, each clip with in and out timecodes
//! at that rate ([`super::timecode`]) and its evidence grouped as the search page groups it:
//! by track (characters, scene, objects, dialogue, shots, then others), each label once with
//! how many annotations carry it, each dialogue line once.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use rushes_protocol::{Match, SearchResponse};

use super::timecode::{clock, FrameRate};

/// Tracks in the order the page shows them; others follow, by name.
const TRACK_ORDER: [&str; 5] = ["character", "scene", "object", "dialogue", "shot"];
/// Dialogue lines printed per track and clip; the rest are counted.
const LINES_SHOWN: usize = 3;
/// Characters of a dialogue line printed; longer lines are cut with "…".
const LINE_CHARS_MAX: usize = 80;

/// How an asset's times are written.
#[derive(Debug, Clone, PartialEq)]
pub enum AssetTimes {
    /// `HH:MM:SS:FF` at the asset's rate.
    Frames(FrameRate),
    /// `HH:MM:SS.mmm`, and why there are no frames.
    NoFrames(String),
}

impl AssetTimes {
    /// From the asset record (`GET /v1/assets/{id}`), or the error that read gave.
    pub fn from_record<E: std::fmt::Display>(record: Result<serde_json::Value, E>) -> AssetTimes {
        match record {
            Ok(record) => match record.get("fps") {
                None | Some(serde_json::Value::Null) => AssetTimes::NoFrames("no fps in the asset record".to_string()),
                Some(fps) => match fps.as_f64().and_then(FrameRate::from_fps) {
                    Some(rate) => AssetTimes::Frames(rate),
                    None => AssetTimes::NoFrames(format!("the asset record's fps {fps} is not a positive number")),
                },
            },
            Err(error) => AssetTimes::NoFrames(format!("asset record unavailable ({error})")),
        }
    }

    fn describe(&self) -> String {
        match self {
            AssetTimes::Frames(rate) => rate.describe(),
            AssetTimes::NoFrames(why) => format!("{why}: times in HH:MM:SS.mmm"),
        }
    }

    fn clip(&self, start_ms: u64, end_ms: u64) -> (String, String) {
        match self {
            AssetTimes::Frames(rate) => rate.clip(start_ms, end_ms),
            AssetTimes::NoFrames(_) => (clock(start_ms), clock(end_ms)),
        }
    }
}

/// The reply as text: a summary line, then per asset a line and a line per clip.
/// `times_of(asset_id)` says how to write that asset's times.
pub fn format_response(response: &SearchResponse, mut times_of: impl FnMut(&str) -> AssetTimes) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} assets in {} ms (shards {}/{} ok)",
        response.total_assets, response.took_ms, response.shards.ok, response.shards.total
    );
    for asset in &response.assets {
        let times = times_of(&asset.asset_id);
        let title = asset.title.as_deref().map(|t| format!("  {t}")).unwrap_or_default();
        let _ = writeln!(out, "{}{title}  score {:.3}  [{}]", asset.asset_id, asset.score, times.describe());
        for clip in &asset.clips {
            let (start, end) = times.clip(clip.start_ms, clip.end_ms);
            let evidence = evidence_summary(&clip.matches);
            let _ = writeln!(out, "  {start} - {end}  {:.3}  {evidence}", clip.score);
        }
    }
    out
}

#[derive(Default)]
struct TrackEvidence<'a> {
    /// Label (or, for an unlabelled vector hit, its annotation id), the annotations carrying
    /// it, its best similarity; in order of first appearance.
    labels: Vec<(&'a str, Vec<&'a str>, Option<f64>)>,
    /// Dialogue lines, one per annotation, in order of first appearance.
    lines: Vec<(&'a str, &'a str)>,
}

/// `Joey (character) ×3, kitchen (scene), "we were on a break" (dialogue)`: each (track, label)
/// once with the number of annotations carrying it (an annotation matching two clauses counts
/// once), each line once; `no evidence returned` when there is none.
pub fn evidence_summary(matches: &[Match]) -> String {
    let mut tracks: BTreeMap<(usize, &str), TrackEvidence> = BTreeMap::new();
    for m in matches {
        let order = TRACK_ORDER.iter().position(|t| *t == m.track).unwrap_or(TRACK_ORDER.len());
        let track = tracks.entry((order, m.track.as_str())).or_default();
        if let Some(text) = &m.text {
            if !track.lines.iter().any(|(id, _)| *id == m.annotation_id) {
                track.lines.push((&m.annotation_id, text));
            }
            continue;
        }
        let key = m.label.as_deref().unwrap_or(&m.annotation_id);
        match track.labels.iter_mut().find(|(label, _, _)| *label == key) {
            Some((_, ids, similarity)) => {
                if !ids.contains(&m.annotation_id.as_str()) {
                    ids.push(&m.annotation_id);
                }
                if let Some(s) = m.similarity {
                    *similarity = Some(similarity.map_or(s, |best| best.max(s)));
                }
            }
            None => track.labels.push((key, vec![&m.annotation_id], m.similarity)),
        }
    }
    let mut parts = Vec::new();
    for ((_, track), evidence) in &tracks {
        for (label, ids, similarity) in &evidence.labels {
            let mut part = format!("{label} ({track})");
            if ids.len() > 1 {
                let _ = write!(part, " ×{}", ids.len());
            }
            if let Some(similarity) = similarity {
                let _ = write!(part, " ≈{similarity:.2}");
            }
            parts.push(part);
        }
        for (_, text) in evidence.lines.iter().take(LINES_SHOWN) {
            parts.push(format!("\"{}\" ({track})", shortened(text)));
        }
        if evidence.lines.len() > LINES_SHOWN {
            parts.push(format!("+{} more lines ({track})", evidence.lines.len() - LINES_SHOWN));
        }
    }
    if parts.is_empty() {
        return "no evidence returned".to_string();
    }
    parts.join(", ")
}

/// One line of text: line breaks become spaces, and long text is cut with "…".
fn shortened(text: &str) -> String {
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= LINE_CHARS_MAX {
        return flat;
    }
    let cut: String = flat.chars().take(LINE_CHARS_MAX - 1).collect();
    format!("{}…", cut.trim_end())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rushes_protocol::{AssetHits, Clip, ShardCounts};

    fn label(track: &str, label: &str, id: &str) -> Match {
        Match {
            track: track.into(),
            label: Some(label.into()),
            text: None,
            annotation_id: id.into(),
            confidence: 0.9,
            clause: 0,
            similarity: None,
            highlights: Vec::new(),
        }
    }

    fn line(id: &str, text: &str) -> Match {
        Match { text: Some(text.into()), label: None, ..label("dialogue", "", id) }
    }

    #[test]
    fn each_label_once_with_its_count_and_each_line_once() {
        let matches = vec![
            label("character", "Joey", "f1"),
            label("scene", "kitchen", "p1"),
            line("d1", "We were on\na break!"),
            label("character", "Joey", "f2"),
            label("character", "Joey", "f3"),
            label("character", "Monica", "f4"),
            // The same annotation for a second clause.
            line("d1", "We were on\na break!"),
            Match { similarity: Some(0.91), ..label("scene", "kitchen", "p1") },
            label("object", "frying pan", "o1"),
        ];
        assert_eq!(
            evidence_summary(&matches),
            "Joey (character) ×3, Monica (character), kitchen (scene) ≈0.91, frying pan (object), \"We were on a break!\" (dialogue)"
        );
        assert_eq!(evidence_summary(&[]), "no evidence returned");
    }

    #[test]
    fn many_and_long_lines_are_shortened() {
        let long = "word ".repeat(40);
        let matches: Vec<Match> = (0..5).map(|i| line(&format!("d{i}"), if i == 0 { &long } else { "short" })).collect();
        let summary = evidence_summary(&matches);
        assert!(summary.contains("…\" (dialogue)"), "{summary}");
        assert!(summary.ends_with("\"short\" (dialogue), \"short\" (dialogue), +2 more lines (dialogue)"), "{summary}");
        // Unknown tracks come after the known ones; an unlabelled vector hit shows its id.
        let matches = vec![label("zeta", "z", "z1"), Match { label: None, ..label("scene", "", "vec-7") }, label("alpha", "a", "a1")];
        assert_eq!(evidence_summary(&matches), "vec-7 (scene), a (alpha), z (zeta)");
    }

    #[test]
    fn times_come_from_the_asset_record() {
        let ok = |value: serde_json::Value| AssetTimes::from_record::<String>(Ok(value));
        assert_eq!(ok(serde_json::json!({"fps": 25.0})), AssetTimes::Frames(FrameRate::from_fps(25.0).expect("25")));
        assert!(matches!(ok(serde_json::json!({"title": "x"})), AssetTimes::NoFrames(why) if why == "no fps in the asset record"));
        assert!(matches!(ok(serde_json::json!({"fps": "fast"})), AssetTimes::NoFrames(why) if why.contains("not a positive number")));
        let failed = AssetTimes::from_record::<&str>(Err("404 from x"));
        assert!(matches!(&failed, AssetTimes::NoFrames(why) if why == "asset record unavailable (404 from x)"), "{failed:?}");
    }

    #[test]
    fn a_reply_as_text() {
        let response = SearchResponse {
            took_ms: 7,
            shards: ShardCounts { total: 2, ok: 2, failed: 0, skipped: 0 },
            total_assets: 2,
            assets: vec![
                AssetHits {
                    asset_id: "s01e01".into(),
                    title: Some("Pilot".into()),
                    series: None,
                    season: None,
                    episode: None,
                    score: 2.5,
                    clips: vec![Clip {
                        start_ms: 61_500,
                        end_ms: 3_600_000,
                        score: 2.5,
                        matches: vec![label("character", "Joey", "f1"), label("character", "Joey", "f2")],
                    }],
                },
                AssetHits {
                    asset_id: "raw".into(),
                    title: None,
                    series: None,
                    season: None,
                    episode: None,
                    score: 1.0,
                    clips: vec![Clip { start_ms: 61_500, end_ms: 62_000, score: 1.0, matches: vec![] }],
                },
            ],
            next_cursor: None,
            groups: None,
            understanding: None,
            warnings: Vec::new(),
        };
        let text = format_response(&response, |asset| match asset {
            "s01e01" => AssetTimes::Frames(FrameRate::from_fps(23.976).expect("23.976")),
            _ => AssetTimes::NoFrames("no fps in the asset record".into()),
        });
        assert_eq!(
            text,
            "2 assets in 7 ms (shards 2/2 ok)\n\
             s01e01  Pilot  score 2.500  [23.976 fps, timecode 24 NDF]\n\
             \x20 00:01:01:11 - 00:59:56:10  2.500  Joey (character) ×2\n\
             raw  score 1.000  [no fps in the asset record: times in HH:MM:SS.mmm]\n\
             \x20 00:01:01.500 - 00:01:02.000  1.000  no evidence returned\n"
        );
    }
}

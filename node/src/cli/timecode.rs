//! SMPTE timecodes for the CLI, by the rules of the search page (`fpsInfo`, `msToFrames` and
//! `framesToTimecode` in node/src/http/ui/app.js; docs/ui.md "Timecodes"), so `rushes search`
//! and the page print the same in and out points:
//!
//! - the frame is the nearest frame at the asset's real rate: an fps within 0.005 of
//!   `N × 1000/1001` is that NTSC rate exactly (23.976 → 24000/1001, 29.97 → 30000/1001,
//!   59.94 → 60000/1001); any other fps is taken as it is;
//! - frames are counted at the integer nominal base (24, 30, 60; the nearest integer for other
//!   rates), non-drop-frame, from `00:00:00:00` at the start of the asset; hours do not wrap.
//!
//! An asset without fps has no frames: its times are `HH:MM:SS.mmm` ([`clock`]).

/// An asset's frame rate as the timecode needs it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FrameRate {
    /// The fps of the asset record.
    pub fps: f64,
    /// Integer frames per timecode second (the `FF` base).
    pub nominal: u64,
    /// Whether `fps` is taken as the NTSC rate `nominal × 1000/1001`.
    pub ntsc: bool,
}

impl FrameRate {
    /// `None` when `fps` is not a positive finite number (no frames can be counted).
    pub fn from_fps(fps: f64) -> Option<FrameRate> {
        if !fps.is_finite() || fps <= 0.0 {
            return None;
        }
        let nominal = fps.round().max(1.0);
        let ntsc_rate = nominal * 1000.0 / 1001.0;
        let ntsc = (fps - nominal).abs() > 1e-6 && (fps - ntsc_rate).abs() < 0.005;
        // Saturates for absurd rates (the API allows at most 1000 fps); never panics.
        Some(FrameRate { fps, nominal: nominal as u64, ntsc })
    }

    /// Real frames per second.
    pub fn rate(&self) -> f64 {
        if self.ntsc {
            self.nominal as f64 * 1000.0 / 1001.0
        } else {
            self.fps
        }
    }

    /// Frames since the start for a time in milliseconds: the nearest frame at the real rate
    /// (a half frame rounds up). Exact integer arithmetic for NTSC and integer rates; other rates
    /// are computed as the page computes them (`Math.round(ms * rate / 1000 + 1e-9)`).
    pub fn frames(&self, ms: u64) -> u64 {
        let ms = u128::from(ms);
        let nominal = u128::from(self.nominal);
        let rounded = |numerator: u128, denominator: u128| (2 * numerator + denominator) / (2 * denominator);
        let frames = if self.ntsc {
            // ms × (nominal × 1000 / 1001) / 1000
            rounded(ms * nominal, 1001)
        } else if self.fps == self.nominal as f64 {
            rounded(ms * nominal, 1000)
        } else {
            return (ms as f64 * self.fps / 1000.0 + 1e-9).round() as u64;
        };
        u64::try_from(frames).unwrap_or(u64::MAX)
    }

    /// `HH:MM:SS:FF` of a time in milliseconds.
    pub fn timecode(&self, ms: u64) -> String {
        frames_to_timecode(self.frames(ms), self.nominal)
    }

    /// In and out timecodes of a clip `[start_ms, end_ms)`: the out point is the first frame
    /// after the clip, and a clip is at least one frame long (docs/ui.md "Timecodes").
    pub fn clip(&self, start_ms: u64, end_ms: u64) -> (String, String) {
        let first = self.frames(start_ms);
        let after = self.frames(end_ms).max(first.saturating_add(1));
        (frames_to_timecode(first, self.nominal), frames_to_timecode(after, self.nominal))
    }

    /// For people: `23.976 fps, timecode 24 NDF` (the base is named only when it is not the fps).
    pub fn describe(&self) -> String {
        if self.fps == self.nominal as f64 {
            format!("{} fps", self.fps)
        } else {
            format!("{} fps, timecode {} NDF", self.fps, self.nominal)
        }
    }
}

/// `HH:MM:SS:FF`, non-drop-frame, counting `frames` at `nominal` frames per timecode second.
/// Hours are not wrapped at 24. A `nominal` of 0 is taken as 1.
pub fn frames_to_timecode(frames: u64, nominal: u64) -> String {
    let base = nominal.max(1);
    let ff = frames % base;
    let seconds = frames / base;
    format!("{:02}:{:02}:{:02}:{:02}", seconds / 3600, (seconds / 60) % 60, seconds % 60, ff)
}

/// A time without frames, for an asset without fps: `HH:MM:SS.mmm`.
pub fn clock(ms: u64) -> String {
    format!("{:02}:{:02}:{:02}.{:03}", ms / 3_600_000, (ms / 60_000) % 60, (ms / 1000) % 60, ms % 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR_MS: u64 = 3_600_000;

    fn rate(fps: f64) -> FrameRate {
        FrameRate::from_fps(fps).expect("a valid fps")
    }

    /// The page's `msToFrames`, as JavaScript computes it (f64 throughout).
    fn page_frames(ms: u64, fps: f64) -> u64 {
        let nominal = fps.round().max(1.0);
        let ntsc = nominal * 1000.0 / 1001.0;
        let rate = if (fps - nominal).abs() > 1e-6 && (fps - ntsc).abs() < 0.005 { ntsc } else { fps };
        (ms as f64 * rate / 1000.0 + 1e-9).round() as u64
    }

    #[test]
    fn rates_are_read_like_the_page() {
        for (fps, nominal, ntsc) in [
            (23.976, 24, true),
            (23.98, 24, true),
            (24.0, 24, false),
            (25.0, 25, false),
            (29.97, 30, true),
            (30.0, 30, false),
            (59.94, 60, true),
            (12.5, 13, false),
            (0.4, 1, false),
        ] {
            let rate = rate(fps);
            assert_eq!((rate.nominal, rate.ntsc), (nominal, ntsc), "{fps}");
        }
        assert_eq!(rate(23.976).rate(), 24000.0 / 1001.0);
        assert_eq!(rate(29.97).rate(), 30000.0 / 1001.0);
        assert_eq!(rate(59.94).rate(), 60000.0 / 1001.0);
        for bad in [0.0, -25.0, f64::NAN, f64::INFINITY] {
            assert_eq!(FrameRate::from_fps(bad), None, "{bad}");
        }
    }

    #[test]
    fn timecodes_at_common_rates() {
        // docs/ui.md: one hour into a 29.97 asset is 00:59:56:12, at 23.976 00:59:56:10.
        assert_eq!(rate(29.97).timecode(HOUR_MS), "00:59:56:12");
        assert_eq!(rate(23.976).timecode(HOUR_MS), "00:59:56:10");
        assert_eq!(rate(25.0).timecode(HOUR_MS), "01:00:00:00");
        assert_eq!(rate(30.0).timecode(HOUR_MS), "01:00:00:00");
        assert_eq!(rate(59.94).timecode(HOUR_MS), "00:59:56:24");
        // 61.5 s: 1474.53 frames at 24000/1001 round to 1475 = 61 s + 11 frames.
        assert_eq!(rate(23.976).frames(61_500), 1475);
        assert_eq!(rate(23.976).timecode(61_500), "00:01:01:11");
        assert_eq!(rate(25.0).timecode(61_500), "00:01:01:13");
        assert_eq!(rate(30.0).timecode(61_500), "00:01:01:15");
        assert_eq!(rate(29.97).timecode(61_500), "00:01:01:13");
        // A half frame rounds up, as Math.round does: 20 ms is half a frame at 25 fps.
        assert_eq!(rate(25.0).frames(20), 1);
        assert_eq!(rate(25.0).frames(19), 0);
        assert_eq!(rate(23.976).timecode(0), "00:00:00:00");
        // Hours do not wrap at 24.
        assert_eq!(rate(25.0).timecode(25 * HOUR_MS), "25:00:00:00");
        assert_eq!(rate(25.0).timecode(100 * HOUR_MS + 1000), "100:00:01:00");
    }

    #[test]
    fn clips_are_at_least_one_frame() {
        assert_eq!(rate(25.0).clip(1000, 2000), ("00:00:01:00".to_string(), "00:00:02:00".to_string()));
        // 1000 ms and 1010 ms are the same frame at 25 fps: the out point is the next one.
        assert_eq!(rate(25.0).clip(1000, 1010), ("00:00:01:00".to_string(), "00:00:01:01".to_string()));
        assert_eq!(rate(23.976).clip(0, HOUR_MS), ("00:00:00:00".to_string(), "00:59:56:10".to_string()));
    }

    /// Every millisecond of the first hour (and a stretch at 10 h) gives the page's frame at the
    /// NTSC and integer rates, where this module uses exact arithmetic and the page floats.
    #[test]
    fn frames_equal_the_page_for_every_millisecond() {
        for fps in [23.976, 24.0, 25.0, 29.97, 30.0, 50.0, 59.94, 60.0, 12.5] {
            let rate = rate(fps);
            for ms in (0..=HOUR_MS).chain(10 * HOUR_MS..10 * HOUR_MS + 100_000) {
                assert_eq!(rate.frames(ms), page_frames(ms, fps), "{ms} ms at {fps} fps");
            }
        }
    }

    #[test]
    fn descriptions_and_clock() {
        assert_eq!(rate(23.976).describe(), "23.976 fps, timecode 24 NDF");
        assert_eq!(rate(25.0).describe(), "25 fps");
        assert_eq!(frames_to_timecode(24 * 3600 + 23, 24), "01:00:00:23");
        assert_eq!(clock(0), "00:00:00.000");
        assert_eq!(clock(HOUR_MS + 61_500), "01:01:01.500");
        assert_eq!(clock(30 * HOUR_MS + 7), "30:00:00.007");
    }
}

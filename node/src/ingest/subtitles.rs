//! Subtitle files (.srt and WebVTT) read into timed cues of plain text.
//!
//! Subtitles come from many tools and many years, so the parser forgives what is merely untidy (text encodings, line endings,
//! numbering, blank lines, styling tags, the separator before the milliseconds) and stops, with the line number, where guessing
//! would put words at the wrong time in search results (times it cannot read, cues that end before they start).

use std::iter::Peekable;

/// Larger files are not subtitles of one video; the limit also bounds the memory one import can take.
pub const MAX_SUBTITLE_BYTES: usize = 16 * 1024 * 1024;
/// A cue is what is on screen at once; more text than this means a missing blank line swallowed the following cues.
pub const MAX_CUE_TEXT_BYTES: usize = 4096;

/// Times beyond 1000 hours are typos or hostile input, not footage.
const MAX_TIME_MS: u64 = 1000 * 3_600_000;
/// How much text passes between two progress calls.
const PROGRESS_STEP: usize = 64 * 1024;
/// A broken file can raise a warning per line; past this many only their count is kept.
const MAX_WARNINGS: usize = 100;
/// How much of a file without a byte order mark is looked at to spot UTF-16.
const SNIFF_BYTES: usize = 8192;
/// How much of a line an error or warning quotes.
const QUOTE_CHARS: usize = 40;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubtitleFormat {
    Srt,
    WebVtt,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DetectedEncoding {
    Utf8,
    Utf8Bom,
    Utf16Le,
    Utf16Be,
    Utf32Le,
    Utf32Be,
    Windows1252,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Cue {
    /// 0-based position among the cues kept, in file order.
    pub index: usize,
    /// 1-based line of the cue's timing line in the decoded text.
    pub line: usize,
    pub start_ms: u64,
    pub end_ms: u64,
    /// Plain text: tags removed, entities decoded, lines joined and whitespace collapsed to single spaces.
    pub text: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ParsedSubtitles {
    pub format: SubtitleFormat,
    pub encoding: DetectedEncoding,
    /// In file order; overlapping cues are kept as they are.
    pub cues: Vec<Cue>,
    /// What was skipped or guessed, each starting with its line number, for the user to check.
    pub warnings: Vec<String>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SubtitleError {
    #[error("the file is {size} bytes; the limit is {limit} bytes: split it")]
    TooLarge { size: usize, limit: usize },
    #[error("the file is empty or holds no cues: give an .srt or .vtt file with at least one cue")]
    Empty,
    #[error("line {line}: {message}")]
    BadCue { line: usize, message: String },
    #[error("the text is not valid {encoding}: {message}")]
    BadEncoding { encoding: &'static str, message: String },
    #[error("not a subtitle file: {0}")]
    UnknownFormat(String),
}

/// Detects encoding and format, decodes, parses. Progress callback gets (bytes_done, bytes_total) now and then (for a progress bar
/// in the CLI): both count bytes of the input, from (0, total) at the start to (total, total) once parsed.
pub fn parse_subtitles(bytes: &[u8], progress: &mut dyn FnMut(usize, usize)) -> Result<ParsedSubtitles, SubtitleError> {
    check_size(bytes)?;
    progress(0, bytes.len());
    let (text, encoding) = decode_text(bytes)?;
    let format = detect_format(&text)?;
    let mut tracker = Progress { callback: &mut *progress, total: bytes.len(), text_len: text.len(), next_report: PROGRESS_STEP };
    let (cues, warnings) = parse_cues(&text, format, &mut tracker)?;
    if cues.is_empty() {
        return Err(SubtitleError::Empty);
    }
    progress(bytes.len(), bytes.len());
    Ok(ParsedSubtitles { format, encoding, cues, warnings })
}

/// Decodes subtitle bytes to text without its byte order mark, and says which encoding was found.
///
/// A byte order mark decides; without one, UTF-16 is recognised by its zero bytes, then valid UTF-8 is taken as UTF-8, and
/// anything else as Windows-1252, the usual encoding of older Western subtitle files (it can decode any byte).
pub fn decode_text(bytes: &[u8]) -> Result<(String, DetectedEncoding), SubtitleError> {
    check_size(bytes)?;
    if let Some(rest) = bytes.strip_prefix(b"\xEF\xBB\xBF") {
        return decode_utf8(rest, 3).map(|text| (text, DetectedEncoding::Utf8Bom));
    }
    // UTF-32LE's mark begins with UTF-16LE's, so it must be tried first.
    if let Some(rest) = bytes.strip_prefix(b"\xFF\xFE\x00\x00") {
        return decode_utf32(rest, 4, false).map(|text| (text, DetectedEncoding::Utf32Le));
    }
    if let Some(rest) = bytes.strip_prefix(b"\x00\x00\xFE\xFF") {
        return decode_utf32(rest, 4, true).map(|text| (text, DetectedEncoding::Utf32Be));
    }
    if let Some(rest) = bytes.strip_prefix(b"\xFF\xFE") {
        return decode_utf16(rest, 2, false, "").map(|text| (text, DetectedEncoding::Utf16Le));
    }
    if let Some(rest) = bytes.strip_prefix(b"\xFE\xFF") {
        return decode_utf16(rest, 2, true, "").map(|text| (text, DetectedEncoding::Utf16Be));
    }
    // Checked before UTF-8 because UTF-16 of plain ASCII, zero bytes included, is also valid UTF-8.
    if let Some(big_endian) = sniff_utf16(bytes) {
        let how = " (guessed from its zero bytes, as the file has no byte order mark)";
        let encoding = if big_endian { DetectedEncoding::Utf16Be } else { DetectedEncoding::Utf16Le };
        return decode_utf16(bytes, 0, big_endian, how).map(|text| (text, encoding));
    }
    if let Ok(text) = std::str::from_utf8(bytes) {
        return Ok((text.to_owned(), DetectedEncoding::Utf8));
    }
    let (text, _) = encoding_rs::WINDOWS_1252.decode_without_bom_handling(bytes);
    Ok((text.into_owned(), DetectedEncoding::Windows1252))
}

fn check_size(bytes: &[u8]) -> Result<(), SubtitleError> {
    if bytes.len() > MAX_SUBTITLE_BYTES {
        return Err(SubtitleError::TooLarge { size: bytes.len(), limit: MAX_SUBTITLE_BYTES });
    }
    Ok(())
}

/// `offset` is where `bytes` starts in the file, so that errors point at the file's own byte positions.
fn decode_utf8(bytes: &[u8], offset: usize) -> Result<String, SubtitleError> {
    std::str::from_utf8(bytes).map(str::to_owned).map_err(|e| SubtitleError::BadEncoding {
        encoding: "UTF-8",
        message: format!("byte {} starts an invalid UTF-8 sequence", offset + e.valid_up_to()),
    })
}

fn decode_utf16(bytes: &[u8], offset: usize, big_endian: bool, how: &str) -> Result<String, SubtitleError> {
    let (encoding, name) = if big_endian { (encoding_rs::UTF_16BE, "UTF-16BE") } else { (encoding_rs::UTF_16LE, "UTF-16LE") };
    match encoding.decode_without_bom_handling_and_without_replacement(bytes) {
        Some(text) => Ok(text.into_owned()),
        None => Err(SubtitleError::BadEncoding { encoding: name, message: format!("{}{how}", utf16_fault(bytes, offset, big_endian)) }),
    }
}

/// encoding_rs only says that UTF-16 is malformed; this finds where, for the error message.
fn utf16_fault(bytes: &[u8], offset: usize, big_endian: bool) -> String {
    let unit = |pair: &[u8]| if big_endian { u16::from_be_bytes([pair[0], pair[1]]) } else { u16::from_le_bytes([pair[0], pair[1]]) };
    let mut units = bytes.chunks_exact(2).map(unit).enumerate().peekable();
    while let Some((i, u)) = units.next() {
        let at = offset + 2 * i;
        match u {
            0xD800..=0xDBFF => {
                if !units.peek().is_some_and(|&(_, next)| (0xDC00..=0xDFFF).contains(&next)) {
                    return format!("byte {at}: the high surrogate {u:#06X} is not followed by a low surrogate");
                }
                units.next();
            }
            0xDC00..=0xDFFF => return format!("byte {at}: the low surrogate {u:#06X} has no high surrogate before it"),
            _ => {}
        }
    }
    if bytes.len() % 2 != 0 {
        return format!("the text ends with half a character ({} bytes, an odd number)", offset + bytes.len());
    }
    "malformed UTF-16".to_owned()
}

fn decode_utf32(bytes: &[u8], offset: usize, big_endian: bool) -> Result<String, SubtitleError> {
    let name = if big_endian { "UTF-32BE" } else { "UTF-32LE" };
    let bad = |message: String| SubtitleError::BadEncoding { encoding: name, message };
    if bytes.len() % 4 != 0 {
        return Err(bad(format!("the text ends with part of a character ({} bytes, not a multiple of 4)", offset + bytes.len())));
    }
    let mut text = String::with_capacity(bytes.len() / 4);
    for (i, quad) in bytes.chunks_exact(4).enumerate() {
        let quad = [quad[0], quad[1], quad[2], quad[3]];
        let value = if big_endian { u32::from_be_bytes(quad) } else { u32::from_le_bytes(quad) };
        match char::from_u32(value) {
            Some(c) => text.push(c),
            None => return Err(bad(format!("byte {}: {value:#010X} is not a Unicode code point", offset + 4 * i))),
        }
    }
    Ok(text)
}

/// Returns Some(big_endian) when the bytes look like UTF-16 without a byte order mark. Subtitles in UTF-8 or Windows-1252 hold no
/// zero bytes, while in UTF-16 every ASCII character (all timing lines, digits and punctuation) has one, always on the same side
/// of its pair of bytes.
fn sniff_utf16(bytes: &[u8]) -> Option<bool> {
    let sample = &bytes[..bytes.len().min(SNIFF_BYTES)];
    let pairs = sample.len() / 2;
    if pairs < 2 {
        return None;
    }
    let (mut first, mut second) = (0usize, 0usize);
    for pair in sample.chunks_exact(2) {
        first += usize::from(pair[0] == 0);
        second += usize::from(pair[1] == 0);
    }
    let dominates = |zeros: usize, other: usize| zeros * 5 >= pairs && other * 10 <= zeros;
    if dominates(second, first) {
        Some(false)
    } else if dominates(first, second) {
        Some(true)
    } else {
        None
    }
}

fn detect_format(text: &str) -> Result<SubtitleFormat, SubtitleError> {
    let Some(first) = Lines::new(text).map(|line| line.text.trim()).find(|line| !line.is_empty()) else {
        return Err(SubtitleError::Empty);
    };
    if is_webvtt_header(first) {
        return Ok(SubtitleFormat::WebVtt);
    }
    if Lines::new(text).any(|line| is_srt_timing_line(line.text)) {
        return Ok(SubtitleFormat::Srt);
    }
    Err(SubtitleError::UnknownFormat(unknown_format_hint(text, first)))
}

fn is_webvtt_header(line: &str) -> bool {
    line.strip_prefix("WEBVTT").is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t']))
}

/// Only the start time is checked, so that a file whose end times are broken is still read as SRT and the broken line is named.
fn is_srt_timing_line(line: &str) -> bool {
    let Some((start, _)) = line.split_once("-->") else {
        return false;
    };
    let Some((clock, fraction)) = start.trim().rsplit_once([',', '.']) else {
        return false;
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let mut parts = clock.split(':');
    digits(fraction) && parts.by_ref().take(3).filter(|part| digits(part)).count() == 3 && parts.next().is_none()
}

fn unknown_format_hint(text: &str, first: &str) -> String {
    if first.starts_with("WEBVTT") {
        return format!("the first line \"{}\" should be WEBVTT alone or followed by a space", quote(first));
    }
    if first.eq_ignore_ascii_case("[script info]") {
        return "this looks like an ASS/SSA file ([Script Info]): convert it to .srt or .vtt first".to_owned();
    }
    if first.starts_with('<') {
        return "this looks like XML or HTML (TTML, DFXP or SAMI subtitles?): convert it to .srt or .vtt first".to_owned();
    }
    if let Some(line) = Lines::new(text).find(|line| line.text.contains("-->")) {
        return format!(
            "line {} has \"-->\" but no SRT time (HH:MM:SS,mmm) before it, and the first line is not WEBVTT, which a WebVTT file needs",
            line.number
        );
    }
    "found neither a WEBVTT first line nor an SRT timing line such as \"00:00:01,000 --> 00:00:02,500\"".to_owned()
}

/// One line of the decoded text, without its line ending.
#[derive(Debug, Clone, Copy)]
struct Line<'a> {
    /// 1-based.
    number: usize,
    /// Byte offset in the text, for progress.
    offset: usize,
    text: &'a str,
}

/// Splits at CRLF, LF and lone CR (old Mac files): `str::lines` does not know the last. Streams, so that a file of 16 MiB of line
/// endings does not become a vector of millions of lines.
#[derive(Clone)]
struct Lines<'a> {
    text: &'a str,
    pos: usize,
    number: usize,
}

impl<'a> Lines<'a> {
    fn new(text: &'a str) -> Self {
        Lines { text, pos: 0, number: 0 }
    }
}

impl<'a> Iterator for Lines<'a> {
    type Item = Line<'a>;

    fn next(&mut self) -> Option<Line<'a>> {
        let rest = self.text.get(self.pos..).filter(|rest| !rest.is_empty())?;
        let (text, used) = match rest.find(['\r', '\n']) {
            Some(end) => (&rest[..end], end + if rest[end..].starts_with("\r\n") { 2 } else { 1 }),
            None => (rest, rest.len()),
        };
        let line = Line { number: self.number + 1, offset: self.pos, text };
        self.pos += used;
        self.number += 1;
        Some(line)
    }
}

struct Progress<'p> {
    callback: &'p mut dyn FnMut(usize, usize),
    /// Input bytes: the caller knows the file's size, not the decoded text's.
    total: usize,
    text_len: usize,
    next_report: usize,
}

impl Progress<'_> {
    fn at(&mut self, text_offset: usize) {
        if text_offset < self.next_report {
            return;
        }
        self.next_report = text_offset.saturating_add(PROGRESS_STEP);
        // Scaled from text to input bytes, which differ for UTF-16 or Windows-1252; u128 cannot overflow.
        let done = (text_offset as u128 * self.total as u128).checked_div(self.text_len as u128).unwrap_or(0);
        (self.callback)(usize::try_from(done).unwrap_or(self.total).min(self.total), self.total);
    }
}

#[derive(Default)]
struct Warnings {
    list: Vec<String>,
    left_out: usize,
}

impl Warnings {
    /// Takes a closure so that warnings past the limit cost no formatting.
    fn push(&mut self, warning: impl FnOnce() -> String) {
        if self.list.len() < MAX_WARNINGS {
            self.list.push(warning());
        } else {
            self.left_out += 1;
        }
    }

    fn into_vec(mut self) -> Vec<String> {
        if self.left_out > 0 {
            self.list.push(format!("{} more warnings like these were left out", self.left_out));
        }
        self.list
    }
}

struct PendingCue {
    line: usize,
    start_ms: u64,
    end_ms: u64,
    raw: String,
}

impl PendingCue {
    fn push_line(&mut self, line: &str) {
        if !self.raw.is_empty() {
            self.raw.push(' ');
        }
        self.raw.push_str(line);
    }
}

fn is_timing_line(line: &str) -> bool {
    // WebVTT forbids "-->" anywhere but in timing lines, and in SRT it appears nowhere else in practice.
    line.contains("-->")
}

fn parse_cues(text: &str, format: SubtitleFormat, progress: &mut Progress<'_>) -> Result<(Vec<Cue>, Vec<String>), SubtitleError> {
    let mut lines = Lines::new(text).peekable();
    let mut cues = Vec::new();
    let mut warnings = Warnings::default();
    if format == SubtitleFormat::WebVtt {
        skip_webvtt_header(&mut lines);
    }
    let mut current: Option<PendingCue> = None;
    // True from a timing line to the next blank line: the lines in between are the cue's text.
    let mut in_text = false;
    while let Some(line) = lines.next() {
        progress.at(line.offset);
        if is_timing_line(line.text) {
            if let Some(done) = current.take() {
                finish_cue(done, &mut cues, &mut warnings)?;
            }
            let (start_ms, end_ms) = parse_timing_line(line.text, line.number, format)?;
            current = Some(PendingCue { line: line.number, start_ms, end_ms, raw: String::new() });
            in_text = true;
            continue;
        }
        let trimmed = line.text.trim();
        if trimmed.is_empty() {
            in_text = false;
            continue;
        }
        let before_timing = lines.peek().is_some_and(|next| is_timing_line(next.text));
        let numeric = trimmed.bytes().all(|b| b.is_ascii_digit());
        if (before_timing && (numeric || !in_text)) || (numeric && timing_after_blank_lines(&lines)) {
            // A cue number (SRT) or identifier (WebVTT): search has no use for either. SRT numbers are often gapped, repeated or
            // missing, so only a line that is no number is worth a warning: it may be text that lost its cue.
            if format == SubtitleFormat::Srt && !numeric {
                warnings.push(|| format!("line {}: \"{}\" stands where a cue number belongs, ignored", line.number, quote(trimmed)));
            }
            continue;
        }
        match current.as_mut() {
            Some(cue) if in_text => cue.push_line(trimmed),
            Some(cue) if format == SubtitleFormat::Srt => {
                // SRT has no blocks but cues, so this is most likely a cue whose text has a blank line in it: keeping the words
                // searchable beats dropping them.
                let cue_line = cue.line;
                warnings.push(|| format!("line {}: text after a blank line, kept as part of the cue at line {cue_line}", line.number));
                cue.push_line(trimmed);
                in_text = true;
            }
            _ if format == SubtitleFormat::WebVtt && is_webvtt_metadata_block(trimmed) => skip_block(&mut lines, progress),
            _ => {
                warnings.push(|| format!("line {}: \"{}\" is outside any cue, ignored", line.number, quote(trimmed)));
                skip_block(&mut lines, progress);
            }
        }
    }
    if let Some(done) = current.take() {
        finish_cue(done, &mut cues, &mut warnings)?;
    }
    Ok((cues, warnings.into_vec()))
}

/// Whether the next line that is not blank is a timing line, as after a cue number that some tools follow with a blank line.
/// Looks ahead on a copy: the scan covers only the blank lines that follow, so the parse stays linear.
fn timing_after_blank_lines(lines: &Peekable<Lines<'_>>) -> bool {
    lines.clone().find(|line| !line.text.trim().is_empty()).is_some_and(|line| is_timing_line(line.text))
}

/// Skips the WEBVTT line and the header lines after it (`Kind: captions`, `Language: en`), up to a blank line or, in files that
/// leave that out, the first timing line.
fn skip_webvtt_header(lines: &mut Peekable<Lines<'_>>) {
    for line in lines.by_ref() {
        if !line.text.trim().is_empty() {
            break;
        }
    }
    while lines.next_if(|line| !line.text.trim().is_empty() && !is_timing_line(line.text)).is_some() {}
}

/// Skips the rest of a block, up to a blank line or a timing line (a cue right after, without the blank line, is still read).
fn skip_block(lines: &mut Peekable<Lines<'_>>, progress: &mut Progress<'_>) {
    while let Some(line) = lines.next_if(|line| !line.text.trim().is_empty() && !is_timing_line(line.text)) {
        progress.at(line.offset);
    }
}

fn is_webvtt_metadata_block(line: &str) -> bool {
    ["NOTE", "STYLE", "REGION"]
        .iter()
        .any(|keyword| line.strip_prefix(keyword).is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t'])))
}

fn finish_cue(cue: PendingCue, cues: &mut Vec<Cue>, warnings: &mut Warnings) -> Result<(), SubtitleError> {
    let text = clean_text(&cue.raw);
    if text.is_empty() {
        warnings.push(|| format!("line {}: the cue has no text once tags are removed, skipped", cue.line));
        return Ok(());
    }
    if text.len() > MAX_CUE_TEXT_BYTES {
        return Err(SubtitleError::BadCue {
            line: cue.line,
            message: format!(
                "the cue text is {} bytes; the limit is {MAX_CUE_TEXT_BYTES} bytes: is a blank line or a timing line missing after it?",
                text.len()
            ),
        });
    }
    cues.push(Cue { index: cues.len(), line: cue.line, start_ms: cue.start_ms, end_ms: cue.end_ms, text });
    Ok(())
}

fn parse_timing_line(line: &str, number: usize, format: SubtitleFormat) -> Result<(u64, u64), SubtitleError> {
    let bad = |message: String| SubtitleError::BadCue { line: number, message };
    let expected = match format {
        SubtitleFormat::Srt => "HH:MM:SS,mmm",
        SubtitleFormat::WebVtt => "HH:MM:SS.mmm or MM:SS.mmm",
    };
    let Some((before, after)) = line.split_once("-->") else {
        return Err(bad(format!("expected a timing line such as \"{expected} --> {expected}\"")));
    };
    let start_text = before.trim();
    // WebVTT puts cue settings (`align:start position:10%`) after the end time; some SRT tools put X1:/Y1: coordinates there.
    let end_text = after.split_whitespace().next().unwrap_or("");
    if start_text.is_empty() {
        return Err(bad(format!("the timing line has no start time before \"-->\": expected {expected}")));
    }
    if end_text.is_empty() {
        return Err(bad(format!("the timing line has no end time after \"-->\": expected {expected}")));
    }
    let read = |token: &str| {
        parse_time(token).map_err(|fault| {
            bad(match fault {
                TimeFault::Unreadable => format!("cannot read the time \"{}\": expected {expected}", quote(token)),
                TimeFault::Minutes => format!("the minutes in the time \"{}\" must be below 60", quote(token)),
                TimeFault::Seconds => format!("the seconds in the time \"{}\" must be below 60", quote(token)),
                TimeFault::TooLong => format!("the time \"{}\" is over 1000 hours: is it a typo?", quote(token)),
            })
        })
    };
    let start_ms = read(start_text)?;
    let end_ms = read(end_text)?;
    if end_ms < start_ms {
        return Err(bad(format!("the cue ends ({}) before it starts ({})", format_ms(end_ms), format_ms(start_ms))));
    }
    if end_ms == start_ms {
        return Err(bad(format!("the cue ends ({}) as soon as it starts: give it a duration", format_ms(end_ms))));
    }
    Ok((start_ms, end_ms))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TimeFault {
    Unreadable,
    Minutes,
    Seconds,
    TooLong,
}

/// Reads `H:MM:SS,mmm` or `MM:SS,mmm` into milliseconds. Tolerates what players tolerate: a dot or a comma before the fraction,
/// hours of any length, one or two digit fields, a fraction of 1 to 3 digits (or more, cut to milliseconds) or none.
fn parse_time(text: &str) -> Result<u64, TimeFault> {
    let (clock, fraction) = match text.rsplit_once([',', '.']) {
        Some((clock, fraction)) => (clock, Some(fraction)),
        None => (text, None),
    };
    let mut parts = clock.split(':');
    let (hours, minutes, seconds) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(h), Some(m), Some(s), None) => (number(h)?, number(m), number(s)),
        (Some(m), Some(s), None, None) => (0, number(m), number(s)),
        _ => return Err(TimeFault::Unreadable),
    };
    // Overflowing minutes or seconds are simply too many minutes or seconds.
    let minutes = minutes.map_err(|fault| if fault == TimeFault::TooLong { TimeFault::Minutes } else { fault })?;
    let seconds = seconds.map_err(|fault| if fault == TimeFault::TooLong { TimeFault::Seconds } else { fault })?;
    if minutes >= 60 {
        return Err(TimeFault::Minutes);
    }
    if seconds >= 60 {
        return Err(TimeFault::Seconds);
    }
    let millis = match fraction {
        None => 0,
        Some(fraction) => {
            let digits = fraction.get(..fraction.len().min(3)).unwrap_or("");
            if fraction.bytes().any(|b| !b.is_ascii_digit()) || digits.is_empty() {
                return Err(TimeFault::Unreadable);
            }
            // "5" after the separator is half a second, as any decimal fraction.
            number(digits)? * 10u64.pow(3 - digits.len() as u32)
        }
    };
    let total = hours.checked_mul(3_600_000).and_then(|ms| ms.checked_add(minutes * 60_000 + seconds * 1000 + millis));
    match total {
        Some(total) if total <= MAX_TIME_MS => Ok(total),
        _ => Err(TimeFault::TooLong),
    }
}

fn number(digits: &str) -> Result<u64, TimeFault> {
    if digits.is_empty() {
        return Err(TimeFault::Unreadable);
    }
    digits.bytes().try_fold(0u64, |value, b| {
        if !b.is_ascii_digit() {
            return Err(TimeFault::Unreadable);
        }
        value.checked_mul(10).and_then(|v| v.checked_add(u64::from(b - b'0'))).ok_or(TimeFault::TooLong)
    })
}

/// As WebVTT writes times, for error messages.
fn format_ms(ms: u64) -> String {
    format!("{:02}:{:02}:{:02}.{:03}", ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000)
}

/// Quotes at most QUOTE_CHARS characters of a line, so a garbage megabyte-long line does not become the message.
fn quote(text: &str) -> String {
    match text.char_indices().nth(QUOTE_CHARS) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

/// Tags out, entities decoded, whitespace collapsed. Tags go first so that an escaped `&lt;i&gt;` stays as text.
fn clean_text(raw: &str) -> String {
    let decoded = decode_entities(&strip_tags(raw));
    // Control characters count as spaces: they show nothing, and decoding garbage or a stray byte can produce them.
    decoded
        .split(|c: char| c.is_whitespace() || c.is_control() || c == '\u{FEFF}')
        .filter(|word| !word.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Removes HTML-like tags (`<i>`, `</b>`, `<font color="red">`, `<c.yellow>`, `<v Joey>`, `<00:00:01.000>`) and ASS override
/// blocks (`{\an8}`, `{\i1}`). A `<` that starts no tag, as in "I <3 you" or "a < b", stays.
fn strip_tags(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find(['<', '{']) {
        out.push_str(&rest[..start]);
        let from = &rest[start..];
        match tag_len(from) {
            Some(len) => rest = &from[len..],
            None => {
                // '<' and '{' are one byte each.
                out.push_str(&from[..1]);
                rest = &from[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The length in bytes of the tag at the start of `text`, if one starts there. The scan for the closing bracket stops at the next
/// opening one (tags do not nest), so that text full of unclosed brackets is still cleaned in linear time.
fn tag_len(text: &str) -> Option<usize> {
    if let Some(body) = text.strip_prefix("{\\") {
        let end = body.find(['}', '{'])?;
        return body[end..].starts_with('}').then_some(end + 3);
    }
    let body = text.strip_prefix('<')?;
    let end = body.find(['>', '<'])?;
    if !body[end..].starts_with('>') {
        return None;
    }
    let inside = &body[..end];
    let name = inside.strip_prefix('/').unwrap_or(inside);
    let is_tag = match name.bytes().next()? {
        b if b.is_ascii_alphabetic() => true,
        // WebVTT karaoke timestamps, `<00:01:02.500>`: digits alone would also match "<3 ... >".
        b if b.is_ascii_digit() => name.bytes().all(|b| b.is_ascii_digit() || b == b':' || b == b'.') && name.contains(':'),
        _ => false,
    };
    is_tag.then_some(end + 2)
}

fn decode_entities(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let after = &rest[amp + 1..];
        // Entity names are short: a ';' further on ends a sentence, not an entity.
        let entity = after.bytes().take(12).position(|b| b == b';').and_then(|end| entity(&after[..end]).map(|c| (c, end + 1)));
        match entity {
            Some((replacement, used)) => {
                out.extend(replacement);
                rest = &after[used..];
            }
            None => {
                out.push('&');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// What an entity name (between `&` and `;`) stands for: Some(None) for the invisible ones, None for no entity.
fn entity(name: &str) -> Option<Option<char>> {
    let c = match name {
        "amp" => '&',
        "lt" => '<',
        "gt" => '>',
        "quot" => '"',
        "apos" => '\'',
        // A non-breaking space still separates words for search.
        "nbsp" => ' ',
        // Direction marks that WebVTT files put around right-to-left text: they show nothing.
        "lrm" | "rlm" => return Some(None),
        _ => {
            let code = name.strip_prefix('#')?;
            let value = match code.strip_prefix(['x', 'X']) {
                Some(hex) if !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()) => u32::from_str_radix(hex, 16).ok()?,
                None if !code.is_empty() && code.bytes().all(|b| b.is_ascii_digit()) => code.parse().ok()?,
                _ => return None,
            };
            char::from_u32(value).filter(|&c| c != '\0')?
        }
    };
    Some(Some(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ParsedSubtitles, SubtitleError> {
        parse_subtitles(text.as_bytes(), &mut |_, _| {})
    }

    fn parse_ok(text: &str) -> ParsedSubtitles {
        match parse(text) {
            Ok(parsed) => parsed,
            Err(e) => panic!("expected {:?} to parse, got: {e}", quote(text)),
        }
    }

    fn texts(parsed: &ParsedSubtitles) -> Vec<&str> {
        parsed.cues.iter().map(|cue| cue.text.as_str()).collect()
    }

    fn times(parsed: &ParsedSubtitles) -> Vec<(u64, u64)> {
        parsed.cues.iter().map(|cue| (cue.start_ms, cue.end_ms)).collect()
    }

    fn error(text: &str) -> String {
        match parse(text) {
            Ok(parsed) => panic!("expected {:?} to fail, got {:?}", quote(text), parsed.cues.first()),
            Err(e) => e.to_string(),
        }
    }

    /// A one-cue SRT file whose timing line (line 2) is `timing`.
    fn srt_with_timing(timing: &str) -> String {
        format!("1\n{timing}\nHello\n")
    }

    fn utf16(text: &str, big_endian: bool, bom: bool) -> Vec<u8> {
        let mut bytes = Vec::new();
        for unit in (if bom { "\u{FEFF}" } else { "" }).encode_utf16().chain(text.encode_utf16()) {
            bytes.extend(if big_endian { unit.to_be_bytes() } else { unit.to_le_bytes() });
        }
        bytes
    }

    fn utf32(text: &str, big_endian: bool) -> Vec<u8> {
        let mut bytes = Vec::new();
        for c in std::iter::once('\u{FEFF}').chain(text.chars()) {
            bytes.extend(if big_endian { u32::from(c).to_be_bytes() } else { u32::from(c).to_le_bytes() });
        }
        bytes
    }

    const THREE_CUE_SRT: &str = "1\n\
        00:00:01,000 --> 00:00:04,000\n\
        Where were you last night?\n\
        \n\
        2\n\
        00:00:04,500 --> 00:00:07,250\n\
        <i>At the office.</i>\n\
        I told you.\n\
        \n\
        3\n\
        00:01:02,003 --> 00:01:05,000\n\
        Don't lie to me, Tom.\n";

    const THREE_CUE_VTT: &str = "WEBVTT\n\
        \n\
        00:00:01.000 --> 00:00:04.000\n\
        Where were you last night?\n\
        \n\
        00:00:04.500 --> 00:00:07.250 align:start\n\
        <v Tom>At the office.\n\
        I told you.\n\
        \n\
        01:02.003 --> 01:05.000\n\
        Don't lie to me, Tom.\n";

    // ---- realistic files ----

    #[test]
    fn realistic_srt_with_three_cues() {
        let parsed = parse_ok(THREE_CUE_SRT);
        assert_eq!(parsed.format, SubtitleFormat::Srt);
        assert_eq!(parsed.encoding, DetectedEncoding::Utf8);
        assert_eq!(
            parsed.cues,
            vec![
                Cue { index: 0, line: 2, start_ms: 1000, end_ms: 4000, text: "Where were you last night?".into() },
                Cue { index: 1, line: 6, start_ms: 4500, end_ms: 7250, text: "At the office. I told you.".into() },
                Cue { index: 2, line: 11, start_ms: 62_003, end_ms: 65_000, text: "Don't lie to me, Tom.".into() },
            ]
        );
        assert!(parsed.warnings.is_empty(), "{:?}", parsed.warnings);
    }

    #[test]
    fn realistic_vtt_with_three_cues() {
        let parsed = parse_ok(THREE_CUE_VTT);
        assert_eq!(parsed.format, SubtitleFormat::WebVtt);
        assert_eq!(
            parsed.cues,
            vec![
                Cue { index: 0, line: 3, start_ms: 1000, end_ms: 4000, text: "Where were you last night?".into() },
                Cue { index: 1, line: 6, start_ms: 4500, end_ms: 7250, text: "At the office. I told you.".into() },
                Cue { index: 2, line: 10, start_ms: 62_003, end_ms: 65_000, text: "Don't lie to me, Tom.".into() },
            ]
        );
        assert!(parsed.warnings.is_empty(), "{:?}", parsed.warnings);
    }

    #[test]
    fn fixture_srt_is_windows_1252_with_crlf() {
        let bytes = include_bytes!("../../tests/fixtures/subtitles/sample.srt");
        assert!(bytes.windows(2).any(|w| w == b"\r\n"));
        let parsed = parse_subtitles(bytes, &mut |_, _| {}).unwrap();
        assert_eq!(parsed.format, SubtitleFormat::Srt);
        assert_eq!(parsed.encoding, DetectedEncoding::Windows1252);
        assert_eq!(
            texts(&parsed),
            [
                "Bonjour ! On se retrouve au café ?",
                "Cet été, tout a changé.",
                "Il fait déjà très chaud à Paris, même le soir.",
                "- Un crème, s'il vous plaît. - Et pour moi, un thé glacé à 4 €.",
            ]
        );
        assert_eq!(parsed.cues.iter().map(|cue| cue.line).collect::<Vec<_>>(), [2, 6, 10, 15]);
        assert!(parsed.warnings.is_empty(), "{:?}", parsed.warnings);
    }

    #[test]
    fn fixture_vtt_has_utf8_bom_and_a_phrase_across_cues() {
        let bytes = include_bytes!("../../tests/fixtures/subtitles/sample.vtt");
        let parsed = parse_subtitles(bytes, &mut |_, _| {}).unwrap();
        assert_eq!(parsed.format, SubtitleFormat::WebVtt);
        assert_eq!(parsed.encoding, DetectedEncoding::Utf8Bom);
        assert_eq!(
            texts(&parsed),
            ["How you doin'?", "Ross, please, not again. Not tonight.", "For the hundredth time,", "we were on a", "break!"]
        );
        assert_eq!(parsed.cues[3].end_ms, 9400);
        assert_eq!(parsed.cues[4].start_ms, 9400);
        assert!(parsed.warnings.is_empty(), "{:?}", parsed.warnings);
    }

    // ---- encodings ----

    #[test]
    fn decodes_plain_utf8() {
        assert_eq!(decode_text("Café".as_bytes()), Ok(("Café".to_owned(), DetectedEncoding::Utf8)));
        assert_eq!(decode_text(b""), Ok((String::new(), DetectedEncoding::Utf8)));
    }

    #[test]
    fn decodes_utf8_with_bom_and_strips_it() {
        assert_eq!(decode_text(b"\xEF\xBB\xBFCaf\xC3\xA9"), Ok(("Café".to_owned(), DetectedEncoding::Utf8Bom)));
    }

    #[test]
    fn rejects_invalid_utf8_after_a_utf8_bom() {
        let e = decode_text(b"\xEF\xBB\xBFab\xFFcd").unwrap_err();
        assert_eq!(e, SubtitleError::BadEncoding { encoding: "UTF-8", message: "byte 5 starts an invalid UTF-8 sequence".into() });
        assert_eq!(e.to_string(), "the text is not valid UTF-8: byte 5 starts an invalid UTF-8 sequence");
    }

    #[test]
    fn decodes_utf16_with_bom() {
        assert_eq!(decode_text(&utf16("Café", false, true)), Ok(("Café".to_owned(), DetectedEncoding::Utf16Le)));
        assert_eq!(decode_text(&utf16("Café", true, true)), Ok(("Café".to_owned(), DetectedEncoding::Utf16Be)));
        // Outside the Basic Multilingual Plane: a surrogate pair.
        assert_eq!(decode_text(&utf16("🎬 été", false, true)), Ok(("🎬 été".to_owned(), DetectedEncoding::Utf16Le)));
    }

    #[test]
    fn decodes_utf16_without_bom_by_its_zero_bytes() {
        assert_eq!(decode_text(&utf16(THREE_CUE_SRT, false, false)), Ok((THREE_CUE_SRT.to_owned(), DetectedEncoding::Utf16Le)));
        assert_eq!(decode_text(&utf16(THREE_CUE_SRT, true, false)), Ok((THREE_CUE_SRT.to_owned(), DetectedEncoding::Utf16Be)));
        // Mostly non-Latin text still has ASCII timing lines.
        let russian = "1\n00:00:01,000 --> 00:00:02,000\nПривет, как дела? Всё хорошо, спасибо.\n";
        assert_eq!(decode_text(&utf16(russian, false, false)), Ok((russian.to_owned(), DetectedEncoding::Utf16Le)));
    }

    #[test]
    fn rejects_broken_utf16() {
        let mut lone_high = utf16("ab", false, true);
        lone_high.extend([0x00, 0xD8, b'c', 0]);
        assert_eq!(
            decode_text(&lone_high),
            Err(SubtitleError::BadEncoding {
                encoding: "UTF-16LE",
                message: "byte 6: the high surrogate 0xD800 is not followed by a low surrogate".into()
            })
        );
        let mut lone_low = utf16("ab", true, true);
        lone_low.extend([0xDC, 0x00]);
        assert_eq!(
            decode_text(&lone_low),
            Err(SubtitleError::BadEncoding {
                encoding: "UTF-16BE",
                message: "byte 6: the low surrogate 0xDC00 has no high surrogate before it".into()
            })
        );
        let mut odd = utf16("abc", false, true);
        odd.push(b'd');
        let e = decode_text(&odd).unwrap_err().to_string();
        assert_eq!(e, "the text is not valid UTF-16LE: the text ends with half a character (9 bytes, an odd number)");
        let mut odd_without_bom = utf16(THREE_CUE_SRT, false, false);
        odd_without_bom.push(b'x');
        let e = decode_text(&odd_without_bom).unwrap_err().to_string();
        assert!(e.contains("UTF-16LE") && e.contains("guessed from its zero bytes"), "{e}");
    }

    #[test]
    fn decodes_utf32_with_bom() {
        assert_eq!(decode_text(&utf32("Café 🎬", false)), Ok(("Café 🎬".to_owned(), DetectedEncoding::Utf32Le)));
        assert_eq!(decode_text(&utf32("Café 🎬", true)), Ok(("Café 🎬".to_owned(), DetectedEncoding::Utf32Be)));
    }

    #[test]
    fn rejects_broken_utf32() {
        let mut surrogate = utf32("ab", true);
        surrogate.extend([0, 0, 0xD8, 0]);
        assert_eq!(
            decode_text(&surrogate),
            Err(SubtitleError::BadEncoding { encoding: "UTF-32BE", message: "byte 12: 0x0000D800 is not a Unicode code point".into() })
        );
        let mut too_big = utf32("a", false);
        too_big.extend(0x0011_0000u32.to_le_bytes());
        let e = decode_text(&too_big).unwrap_err().to_string();
        assert_eq!(e, "the text is not valid UTF-32LE: byte 8: 0x00110000 is not a Unicode code point");
        let mut ragged = utf32("a", false);
        ragged.extend([b'b', 0]);
        let e = decode_text(&ragged).unwrap_err().to_string();
        assert_eq!(e, "the text is not valid UTF-32LE: the text ends with part of a character (10 bytes, not a multiple of 4)");
    }

    #[test]
    fn decodes_windows_1252_when_not_utf8() {
        assert_eq!(decode_text(b"Caf\xE9"), Ok(("Café".to_owned(), DetectedEncoding::Windows1252)));
        // 0x80 is the euro sign in Windows-1252 (a control character in ISO-8859-1), 0x92 its curly apostrophe.
        assert_eq!(decode_text(b"4 \x80, l\x92\xE9t\xE9"), Ok(("4 €, l’été".to_owned(), DetectedEncoding::Windows1252)));
    }

    #[test]
    fn parses_the_same_file_in_every_encoding() {
        let text = "1\r\n00:00:01,000 --> 00:00:02,000\r\nUn café cet été ?\r\n";
        let mut windows_1252 = Vec::new();
        for c in text.chars() {
            windows_1252.push(match c {
                'é' => 0xE9,
                c => c as u8,
            });
        }
        let cases = [
            (text.as_bytes().to_vec(), DetectedEncoding::Utf8),
            ([b"\xEF\xBB\xBF".as_slice(), text.as_bytes()].concat(), DetectedEncoding::Utf8Bom),
            (utf16(text, false, true), DetectedEncoding::Utf16Le),
            (utf16(text, true, true), DetectedEncoding::Utf16Be),
            (utf16(text, false, false), DetectedEncoding::Utf16Le),
            (utf16(text, true, false), DetectedEncoding::Utf16Be),
            (utf32(text, false), DetectedEncoding::Utf32Le),
            (utf32(text, true), DetectedEncoding::Utf32Be),
            (windows_1252, DetectedEncoding::Windows1252),
        ];
        for (bytes, encoding) in cases {
            let parsed = parse_subtitles(&bytes, &mut |_, _| {}).unwrap();
            assert_eq!(parsed.encoding, encoding);
            assert_eq!(texts(&parsed), ["Un café cet été ?"], "{encoding:?}");
            assert_eq!((parsed.cues[0].line, parsed.cues[0].start_ms), (2, 1000), "{encoding:?}");
        }
    }

    #[test]
    fn line_numbers_count_in_the_decoded_text() {
        // In UTF-16 the broken timing line is at byte 70 or so, but it is line 5 of the text.
        let text = "1\n00:00:01,000 --> 00:00:02,000\nHi\n\n00:00:0x,000 --> 00:00:03,000\nBye\n";
        let e = parse_subtitles(&utf16(text, true, true), &mut |_, _| {}).unwrap_err().to_string();
        assert_eq!(e, "line 5: cannot read the time \"00:00:0x,000\": expected HH:MM:SS,mmm");
    }

    // ---- formats ----

    #[test]
    fn detects_webvtt_by_its_first_non_empty_line() {
        for header in ["WEBVTT", "WEBVTT - Movie title", "WEBVTT\tKind", "\n\n  WEBVTT  "] {
            let parsed = parse_ok(&format!("{header}\n\n00:01.000 --> 00:02.000\nHi\n"));
            assert_eq!(parsed.format, SubtitleFormat::WebVtt, "{header:?}");
            assert_eq!(texts(&parsed), ["Hi"]);
        }
    }

    #[test]
    fn webvtt_header_lines_and_a_missing_blank_line_after_the_header() {
        let parsed = parse_ok("WEBVTT\nKind: captions\nLanguage: en\n\n00:01.000 --> 00:02.000\nHi\n");
        assert_eq!(texts(&parsed), ["Hi"]);
        let parsed = parse_ok("WEBVTT\n00:01.000 --> 00:02.000\nHi\n");
        assert_eq!(texts(&parsed), ["Hi"]);
        assert_eq!(parsed.cues[0].line, 2);
    }

    #[test]
    fn a_webvtt_lookalike_header_is_no_webvtt() {
        let e = error("WEBVTTX\n\n00:01.000 --> 00:02.000\nHi\n");
        assert_eq!(e, "not a subtitle file: the first line \"WEBVTTX\" should be WEBVTT alone or followed by a space");
        // But the file is still SRT if it has SRT times.
        assert_eq!(parse_ok("WEBVTTX\n\n00:00:01.000 --> 00:00:02.000\nHi\n").format, SubtitleFormat::Srt);
    }

    #[test]
    fn unknown_formats_get_a_hint() {
        assert_eq!(
            error("just some notes\nabout the shoot\n"),
            "not a subtitle file: found neither a WEBVTT first line nor an SRT timing line such as \"00:00:01,000 --> 00:00:02,500\""
        );
        assert!(error("[Script Info]\nTitle: x\n").contains("ASS/SSA"));
        assert!(error("<?xml version=\"1.0\"?>\n<tt></tt>\n").contains("XML or HTML"));
        let e = error("\n00:01.000 --> 00:02.000\nHi\n");
        assert!(e.starts_with("not a subtitle file: line 2 has \"-->\" but no SRT time"), "{e}");
        assert!(matches!(parse("{\\rtf1 hello}"), Err(SubtitleError::UnknownFormat(_))));
    }

    #[test]
    fn empty_files_and_files_without_cues() {
        for text in ["", "\n\n  \r\n\t", "\u{FEFF}", "WEBVTT\n", "WEBVTT\n\nNOTE nothing yet\n"] {
            assert_eq!(parse(text), Err(SubtitleError::Empty), "{text:?}");
        }
        assert_eq!(parse_subtitles(b"\xEF\xBB\xBF", &mut |_, _| {}), Err(SubtitleError::Empty));
        assert_eq!(parse_subtitles(&utf16("\r\n", false, true), &mut |_, _| {}), Err(SubtitleError::Empty));
        assert_eq!(SubtitleError::Empty.to_string(), "the file is empty or holds no cues: give an .srt or .vtt file with at least one cue");
        // Every cue empty after cleaning: no cues either.
        assert_eq!(parse("1\n00:00:01,000 --> 00:00:02,000\n<i></i>\n"), Err(SubtitleError::Empty));
    }

    // ---- tolerances ----

    #[test]
    fn crlf_and_lone_cr_line_endings() {
        let lf = parse_ok(THREE_CUE_SRT);
        let crlf = parse_ok(&THREE_CUE_SRT.replace('\n', "\r\n"));
        let cr = parse_ok(&THREE_CUE_SRT.replace('\n', "\r"));
        assert_eq!(crlf.cues, lf.cues);
        assert_eq!(cr.cues, lf.cues);
        let vtt_cr = parse_ok(&THREE_CUE_VTT.replace('\n', "\r"));
        assert_eq!(vtt_cr.cues, parse_ok(THREE_CUE_VTT).cues);
        // Mixed, as after an edit in another editor.
        let mixed = parse_ok("1\r\n00:00:01,000 --> 00:00:02,000\rHi\n\r\n2\r00:00:03,000 --> 00:00:04,000\nthere\r\n");
        assert_eq!(texts(&mixed), ["Hi", "there"]);
        assert_eq!(mixed.cues[1].line, 6);
    }

    #[test]
    fn srt_numbering_gaps_missing_numbers_and_garbage_numbers() {
        let parsed = parse_ok(
            "7\n00:00:01,000 --> 00:00:02,000\nOne\n\n\
             00:00:03,000 --> 00:00:04,000\nTwo\n\n\
             42\n00:00:05,000 --> 00:00:06,000\nThree\n\n\
             #4a\n00:00:07,000 --> 00:00:08,000\nFour\n",
        );
        assert_eq!(texts(&parsed), ["One", "Two", "Three", "Four"]);
        assert_eq!(parsed.cues.iter().map(|cue| cue.index).collect::<Vec<_>>(), [0, 1, 2, 3]);
        assert_eq!(parsed.warnings, ["line 12: \"#4a\" stands where a cue number belongs, ignored"]);
        // A number right before the next timing line, with no blank line, is a number too.
        let parsed = parse_ok("1\n00:00:01,000 --> 00:00:02,000\nOne\n2\n00:00:03,000 --> 00:00:04,000\nTwo\n");
        assert_eq!(texts(&parsed), ["One", "Two"]);
    }

    #[test]
    fn extra_blank_lines_anywhere() {
        let parsed = parse_ok("\n\n\n1\n00:00:01,000 --> 00:00:02,000\nOne\n\n\n\n   \n2\n\n00:00:03,000 --> 00:00:04,000\n\nTwo\n\n\n");
        // A blank line right after the timing line leaves that cue empty; "Two" is then kept with a warning rather than lost.
        assert_eq!(texts(&parsed), ["One", "Two"]);
        assert_eq!(parsed.cues[1].line, 13);
        assert_eq!(parsed.warnings, ["line 15: text after a blank line, kept as part of the cue at line 13"]);
        let parsed = parse_ok("WEBVTT\n\n\n\n00:01.000 --> 00:02.000\nOne\n\n\n\n00:03.000 --> 00:04.000\nTwo\n\n\n");
        assert_eq!(texts(&parsed), ["One", "Two"]);
        assert!(parsed.warnings.is_empty());
    }

    #[test]
    fn srt_text_after_a_blank_line_inside_a_cue_is_kept() {
        let parsed = parse_ok("1\n00:00:01,000 --> 00:00:02,000\n- Hi.\n\n- Hello.\n\n2\n00:00:03,000 --> 00:00:04,000\nBye\n");
        assert_eq!(texts(&parsed), ["- Hi. - Hello.", "Bye"]);
        assert_eq!(parsed.warnings, ["line 5: text after a blank line, kept as part of the cue at line 2"]);
    }

    #[test]
    fn text_outside_cues_is_ignored_with_a_warning() {
        let parsed = parse_ok("Created by SubEdit\n\n1\n00:00:01,000 --> 00:00:02,000\nHi\n");
        assert_eq!(texts(&parsed), ["Hi"]);
        assert_eq!(parsed.warnings, ["line 1: \"Created by SubEdit\" is outside any cue, ignored"]);
        let parsed = parse_ok("WEBVTT\n\n00:01.000 --> 00:02.000\nHi\n\nstray\ntext\n\n00:03.000 --> 00:04.000\nthere\n");
        assert_eq!(texts(&parsed), ["Hi", "there"]);
        assert_eq!(parsed.warnings, ["line 6: \"stray\" is outside any cue, ignored"]);
    }

    #[test]
    fn dots_in_srt_times_and_commas_in_webvtt_times() {
        let parsed = parse_ok("1\n00:00:01.500 --> 00:00:02.250\nHi\n");
        assert_eq!(parsed.format, SubtitleFormat::Srt);
        assert_eq!(times(&parsed), [(1500, 2250)]);
        let parsed = parse_ok("WEBVTT\n\n00:00:01,500 --> 00:00:02,250\nHi\n");
        assert_eq!(times(&parsed), [(1500, 2250)]);
    }

    #[test]
    fn hours_above_99() {
        let parsed = parse_ok(&srt_with_timing("123:04:05,006 --> 999:59:59,999"));
        assert_eq!(times(&parsed), [(123 * 3_600_000 + 4 * 60_000 + 5_006, 999 * 3_600_000 + 3_599_999)]);
    }

    #[test]
    fn webvtt_times_without_hours() {
        let parsed = parse_ok("WEBVTT\n\n01:02.003 --> 59:59.999\nHi\n");
        assert_eq!(times(&parsed), [(62_003, 3_599_999)]);
    }

    #[test]
    fn odd_but_readable_fractions() {
        let parsed = parse_ok(&srt_with_timing("00:00:01,5 --> 00:00:02,25"));
        assert_eq!(times(&parsed), [(1500, 2250)]);
        let parsed = parse_ok(&srt_with_timing("00:00:01,000 --> 00:00:03"));
        assert_eq!(times(&parsed), [(1000, 3000)]);
        let parsed = parse_ok(&srt_with_timing("0:0:1,0009 --> 00:00:02,0001"));
        assert_eq!(times(&parsed), [(1000, 2000)]);
        let parsed = parse_ok(&srt_with_timing("00:00:01,000-->00:00:02,000"));
        assert_eq!(times(&parsed), [(1000, 2000)]);
    }

    #[test]
    fn webvtt_cue_identifiers() {
        let parsed = parse_ok(
            "WEBVTT\n\n\
             intro\n00:01.000 --> 00:02.000\nOne\n\n\
             2\n00:03.000 --> 00:04.000\nTwo\n\n\
             chapter 1 - the beach\n00:05.000 --> 00:06.000\nThree\n",
        );
        assert_eq!(texts(&parsed), ["One", "Two", "Three"]);
        assert_eq!(parsed.cues.iter().map(|cue| cue.line).collect::<Vec<_>>(), [4, 8, 12]);
        assert!(parsed.warnings.is_empty(), "{:?}", parsed.warnings);
    }

    #[test]
    fn webvtt_note_style_and_region_blocks_are_skipped() {
        let parsed = parse_ok(
            "WEBVTT\n\n\
             REGION\nid:fred\nwidth:40%\n\n\
             STYLE\n::cue { color: white }\n\n\
             NOTE This file was made by hand\nover two lines\n\n\
             00:01.000 --> 00:02.000\nOne\n\n\
             NOTE\ta note between cues\n\n\
             00:03.000 --> 00:04.000 region:fred\nTwo\n\n\
             NOTE\n",
        );
        assert_eq!(texts(&parsed), ["One", "Two"]);
        assert!(parsed.warnings.is_empty(), "{:?}", parsed.warnings);
        // Not a keyword when glued to other letters: a stray line.
        let parsed = parse_ok("WEBVTT\n\nNOTES\n\n00:01.000 --> 00:02.000\nOne\n");
        assert_eq!(parsed.warnings.len(), 1);
    }

    #[test]
    fn cue_settings_after_the_end_time() {
        let parsed =
            parse_ok("WEBVTT\n\n00:01.000 --> 00:02.000 align:start position:10%\nOne\n\n00:03.000 --> 00:04.000\tline:0 size:50%\nTwo\n");
        assert_eq!(times(&parsed), [(1000, 2000), (3000, 4000)]);
        let parsed = parse_ok(&srt_with_timing("00:00:01,000 --> 00:00:02,000  X1:100 X2:600 Y1:50 Y2:80"));
        assert_eq!(times(&parsed), [(1000, 2000)]);
    }

    #[test]
    fn overlapping_cues_are_kept_in_file_order() {
        let parsed = parse_ok(
            "1\n00:00:05,000 --> 00:00:09,000\nFirst\n\n\
             2\n00:00:01,000 --> 00:00:06,000\nSecond\n\n\
             3\n00:00:05,000 --> 00:00:09,000\nThird\n",
        );
        assert_eq!(texts(&parsed), ["First", "Second", "Third"]);
        assert_eq!(times(&parsed), [(5000, 9000), (1000, 6000), (5000, 9000)]);
        assert_eq!(parsed.cues.iter().map(|cue| cue.index).collect::<Vec<_>>(), [0, 1, 2]);
    }

    #[test]
    fn styling_tags_are_removed_and_their_text_kept() {
        let cases = [
            ("<i>italic</i> and <b>bold</b> and <u>under</u>", "italic and bold and under"),
            ("<font color=\"#ffff00\" face=\"Arial\">yellow</font> text", "yellow text"),
            ("<c.yellow.bg_blue>classy</c> words", "classy words"),
            ("<v Joey>How you doin'?</v>", "How you doin'?"),
            ("<v.loud Mary Ann>Hey!", "Hey!"),
            ("Never <00:00:01.000>drink <00:00:01.500>liquid nitrogen", "Never drink liquid nitrogen"),
            ("{\\an8}Top of the screen", "Top of the screen"),
            ("{\\i1}slanted{\\i0} {\\pos(10,20)}placed", "slanted placed"),
            ("<ruby>漢<rt>kan</rt></ruby>", "漢kan"),
            ("<I>UPPER</I>", "UPPER"),
        ];
        for (raw, clean) in cases {
            let parsed = parse_ok(&format!("1\n00:00:01,000 --> 00:00:02,000\n{raw}\n"));
            assert_eq!(texts(&parsed), [clean], "{raw:?}");
        }
    }

    #[test]
    fn angle_brackets_and_braces_that_are_no_tags_stay() {
        let cases = [
            ("I <3 you", "I <3 you"),
            ("a < b and c > d", "a < b and c > d"),
            ("unclosed <i tag", "unclosed <i tag"),
            ("{not ass} {\\unclosed", "{not ass} {\\unclosed"),
            ("<3 me> more", "<3 me> more"),
        ];
        for (raw, clean) in cases {
            let parsed = parse_ok(&format!("1\n00:00:01,000 --> 00:00:02,000\n{raw}\n"));
            assert_eq!(texts(&parsed), [clean], "{raw:?}");
        }
    }

    #[test]
    fn html_entities_are_decoded() {
        let cases = [
            ("Tom &amp; Jerry", "Tom & Jerry"),
            ("&lt;i&gt; is a tag", "<i> is a tag"),
            ("non&nbsp;breaking", "non breaking"),
            ("&quot;Quoted&quot; and it&#39;s &apos;fine&apos;", "\"Quoted\" and it's 'fine'"),
            ("&#233;t&#xE9; &#X1F3AC;", "été 🎬"),
            ("&lrm;left&rlm;", "left"),
            ("AT&T; R&D &unknown; &#xZZ; &#0; &; &", "AT&T; R&D &unknown; &#xZZ; &#0; &; &"),
            ("&amp;lt;", "&lt;"),
        ];
        for (raw, clean) in cases {
            let parsed = parse_ok(&format!("1\n00:00:01,000 --> 00:00:02,000\n{raw}\n"));
            assert_eq!(texts(&parsed), [clean], "{raw:?}");
        }
    }

    #[test]
    fn whitespace_is_collapsed_and_lines_joined_with_one_space() {
        let parsed = parse_ok("1\n00:00:01,000 --> 00:00:02,000\n   Hello,\t\t  world  \n  <i> second </i>  line \u{1}\n");
        assert_eq!(texts(&parsed), ["Hello, world second line"]);
    }

    #[test]
    fn cues_empty_after_cleaning_are_skipped_with_a_warning() {
        let parsed = parse_ok(
            "1\n00:00:01,000 --> 00:00:02,000\n<i> </i>\n\n\
             2\n00:00:03,000 --> 00:00:04,000\nKept\n\n\
             3\n00:00:05,000 --> 00:00:06,000\n{\\an8}&nbsp;\n\n\
             4\n00:00:07,000 --> 00:00:08,000\n",
        );
        assert_eq!(texts(&parsed), ["Kept"]);
        assert_eq!(parsed.cues[0].index, 0);
        assert_eq!(
            parsed.warnings,
            [
                "line 2: the cue has no text once tags are removed, skipped",
                "line 10: the cue has no text once tags are removed, skipped",
                "line 14: the cue has no text once tags are removed, skipped",
            ]
        );
    }

    #[test]
    fn warnings_are_capped() {
        let mut text = String::new();
        for i in 0..300 {
            text.push_str(&format!("{}\n00:00:{:02},000 --> 00:00:{:02},500\n<i></i>\n\n", i, i % 60, i % 60));
        }
        text.push_str("00:00:01,000 --> 00:00:02,000\nKept\n");
        let parsed = parse_ok(&text);
        assert_eq!(parsed.warnings.len(), MAX_WARNINGS + 1);
        assert_eq!(parsed.warnings[MAX_WARNINGS], "200 more warnings like these were left out");
    }

    // ---- errors ----

    #[test]
    fn unreadable_time_names_its_line() {
        let mut text = String::new();
        for i in 1..=4 {
            text.push_str(&format!("{i}\n00:00:0{i},000 --> 00:00:0{i},900\nCue {i}\n\n"));
        }
        text.push_str("00:01:xx,000 --> 00:01:05,000\nBroken\n");
        let e = parse(&text).unwrap_err();
        assert_eq!(e, SubtitleError::BadCue { line: 17, message: "cannot read the time \"00:01:xx,000\": expected HH:MM:SS,mmm".into() });
        assert_eq!(e.to_string(), "line 17: cannot read the time \"00:01:xx,000\": expected HH:MM:SS,mmm");
    }

    #[test]
    fn unreadable_times_in_every_shape() {
        for (timing, token) in [
            ("00:00:01,000 --> 00:00:02,00x", "00:00:02,00x"),
            ("00:00:01,000 --> 2", "2"),
            ("00:00:01,000 --> 00:00:02,", "00:00:02,"),
            ("00:00:01,000 --> 00:00::02,000", "00:00::02,000"),
            ("00:00:01,000 --> 0:00:00:02,000", "0:00:00:02,000"),
            ("00:00:01,000 --> -00:00:02,000", "-00:00:02,000"),
            ("00:00:01,000 --> 00:00:02,1,0", "00:00:02,1,0"),
        ] {
            assert_eq!(
                error(&srt_with_timing(timing)),
                format!("line 2: cannot read the time \"{token}\": expected HH:MM:SS,mmm"),
                "{timing:?}"
            );
        }
        let e = error("WEBVTT\n\n00:01.000 --> 00:0x.000\nHi\n");
        assert_eq!(e, "line 3: cannot read the time \"00:0x.000\": expected HH:MM:SS.mmm or MM:SS.mmm");
        // The start time is checked as well, in a file known to be SRT from its other cues.
        let e = error("1\n00:00:01,000 --> 00:00:02,000\nHi\n\n2\n1 00:00:03,000 --> 00:00:04,000\nBye\n");
        assert_eq!(e, "line 6: cannot read the time \"1 00:00:03,000\": expected HH:MM:SS,mmm");
    }

    #[test]
    fn missing_start_or_end_time() {
        assert_eq!(
            error("1\n00:00:01,000 --> 00:00:02,000\nHi\n\n2\n --> 00:00:04,000\nBye\n"),
            "line 6: the timing line has no start time before \"-->\": expected HH:MM:SS,mmm"
        );
        assert_eq!(
            error(&srt_with_timing("00:00:01,000 -->  ")),
            "line 2: the timing line has no end time after \"-->\": expected HH:MM:SS,mmm"
        );
    }

    #[test]
    fn end_before_start_names_its_line() {
        let text = "1\n00:00:00,500 --> 00:00:01,000\nHi\n\n00:00:02,000 --> 00:00:01,000\nBye\n";
        let e = parse(text).unwrap_err();
        assert_eq!(e.to_string(), "line 5: the cue ends (00:00:01.000) before it starts (00:00:02.000)");
        assert!(matches!(e, SubtitleError::BadCue { line: 5, .. }));
    }

    #[test]
    fn end_equal_to_start_is_an_error() {
        let e = error("WEBVTT\n\n00:01.000 --> 00:01.000\nHi\n");
        assert_eq!(e, "line 3: the cue ends (00:00:01.000) as soon as it starts: give it a duration");
    }

    #[test]
    fn minutes_and_seconds_must_be_below_60() {
        assert_eq!(
            error(&srt_with_timing("00:60:00,000 --> 01:00:00,000")),
            "line 2: the minutes in the time \"00:60:00,000\" must be below 60"
        );
        assert_eq!(
            error(&srt_with_timing("00:00:01,000 --> 00:00:75,000")),
            "line 2: the seconds in the time \"00:00:75,000\" must be below 60"
        );
        assert_eq!(
            error(&srt_with_timing("00:00:01,000 --> 00:99999999999999999999999:00,000")),
            "line 2: the minutes in the time \"00:99999999999999999999999:00,000\" must be below 60"
        );
        assert_eq!(error("WEBVTT\n\n61:00.000 --> 62:00.000\nHi\n"), "line 3: the minutes in the time \"61:00.000\" must be below 60");
    }

    #[test]
    fn absurd_times_are_rejected_without_overflow() {
        assert_eq!(times(&parse_ok(&srt_with_timing("999:00:00,000 --> 1000:00:00,000"))), [(999 * 3_600_000, MAX_TIME_MS)]);
        assert_eq!(
            error(&srt_with_timing("00:00:01,000 --> 1000:00:00,001")),
            "line 2: the time \"1000:00:00,001\" is over 1000 hours: is it a typo?"
        );
        // Past u64 milliseconds, and past u64 itself.
        for hours in ["5124095576030432", "18446744073709551615", "99999999999999999999999999"] {
            let timing = format!("00:00:01,000 --> {hours}:00:00,000");
            let e = error(&srt_with_timing(&timing));
            assert!(e.starts_with("line 2: the time \"") && e.ends_with("\" is over 1000 hours: is it a typo?"), "{e}");
        }
    }

    #[test]
    fn long_tokens_are_quoted_short() {
        let token = "9".repeat(500);
        let e = error(&srt_with_timing(&format!("00:00:01,000 --> {token}x")));
        assert!(e.len() < 150, "{e}");
        assert!(e.contains('…'), "{e}");
    }

    #[test]
    fn cue_text_over_the_limit_names_its_timing_line() {
        let long = "word ".repeat(MAX_CUE_TEXT_BYTES / 5 + 1);
        let e = parse(&format!("1\n00:00:01,000 --> 00:00:02,000\nfine\n\n2\n00:00:03,000 --> 00:00:04,000\n{long}\n")).unwrap_err();
        let SubtitleError::BadCue { line, message } = e else { panic!("expected BadCue, got {e:?}") };
        assert_eq!(line, 6);
        assert!(message.starts_with("the cue text is 4099 bytes; the limit is 4096 bytes"), "{message}");
        // Exactly at the limit is fine, and tags do not count.
        let at_limit = format!("<i>{}</i>", "x".repeat(MAX_CUE_TEXT_BYTES));
        assert_eq!(parse_ok(&format!("1\n00:00:01,000 --> 00:00:02,000\n{at_limit}\n")).cues[0].text.len(), MAX_CUE_TEXT_BYTES);
    }

    #[test]
    fn too_large_is_refused_before_decoding() {
        let bytes = vec![0xFFu8; MAX_SUBTITLE_BYTES + 1];
        let mut calls = 0;
        let e = parse_subtitles(&bytes, &mut |_, _| calls += 1).unwrap_err();
        assert_eq!(e, SubtitleError::TooLarge { size: MAX_SUBTITLE_BYTES + 1, limit: MAX_SUBTITLE_BYTES });
        assert_eq!(
            e.to_string(),
            format!("the file is {} bytes; the limit is {MAX_SUBTITLE_BYTES} bytes: split it", MAX_SUBTITLE_BYTES + 1)
        );
        assert_eq!(calls, 0);
        assert_eq!(decode_text(&bytes), Err(SubtitleError::TooLarge { size: MAX_SUBTITLE_BYTES + 1, limit: MAX_SUBTITLE_BYTES }));
    }

    // ---- progress ----

    #[test]
    fn progress_at_start_and_end_of_a_small_file() {
        let mut calls = Vec::new();
        parse_subtitles(THREE_CUE_SRT.as_bytes(), &mut |done, total| calls.push((done, total))).unwrap();
        let total = THREE_CUE_SRT.len();
        assert_eq!(calls, [(0, total), (total, total)]);
    }

    #[test]
    fn progress_every_64_kib_of_a_large_file() {
        let mut text = String::new();
        let mut i = 0u64;
        while text.len() < 1024 * 1024 {
            let start = i * 2000;
            text.push_str(&format!("{}\n{} --> {}\nLine number {i} of a long file\n\n", i + 1, srt_time(start), srt_time(start + 1500)));
            i += 1;
        }
        // UTF-16 makes input bytes twice the text bytes: progress counts input bytes.
        let bytes = utf16(&text, false, true);
        let mut calls = Vec::new();
        let parsed = parse_subtitles(&bytes, &mut |done, total| calls.push((done, total))).unwrap();
        assert_eq!(parsed.cues.len() as u64, i);
        assert!(calls.len() >= 16, "{} calls", calls.len());
        assert!(calls.iter().all(|&(_, total)| total == bytes.len()));
        assert!(calls.windows(2).all(|w| w[0].0 <= w[1].0), "not monotonic: {calls:?}");
        assert_eq!(calls.first(), Some(&(0, bytes.len())));
        assert_eq!(calls.last(), Some(&(bytes.len(), bytes.len())));
        let largest_step = calls.windows(2).map(|w| w[1].0 - w[0].0).max().unwrap_or(0);
        assert!(largest_step <= 2 * (PROGRESS_STEP + 200), "step {largest_step}");
    }

    fn srt_time(ms: u64) -> String {
        format!("{:02}:{:02}:{:02},{:03}", ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000)
    }

    // ---- robustness ----

    /// xorshift64*: deterministic, so a failure can be replayed, and no extra crate.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// What a successful parse promises, whatever the input.
    fn check_invariants(bytes: &[u8], result: &Result<ParsedSubtitles, SubtitleError>) {
        let Ok(parsed) = result else { return };
        assert!(!parsed.cues.is_empty(), "{bytes:?}");
        for (i, cue) in parsed.cues.iter().enumerate() {
            assert_eq!(cue.index, i);
            assert!(cue.line >= 1);
            assert!(cue.start_ms < cue.end_ms && cue.end_ms <= MAX_TIME_MS, "{cue:?}");
            assert!(!cue.text.is_empty() && cue.text.len() <= MAX_CUE_TEXT_BYTES, "{cue:?}");
            assert_eq!(cue.text.trim(), cue.text);
            assert!(!cue.text.contains("  ") && !cue.text.contains('\n'), "{cue:?}");
        }
        assert!(parsed.warnings.len() <= MAX_WARNINGS + 1);
    }

    #[test]
    fn random_bytes_never_panic() {
        // Biased towards bytes that mean something to the parser, so that random input reaches past format detection.
        const ALPHABET: &[u8] = b"0123456789:,.-->\n\r\n <>/{}\\&;#ivbWEBVTNOSYLRGX \t\x00\xFF\xFE\xEF\xBB\xBF\xE9\xD8\xDC";
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for _ in 0..3000 {
            let len = rng.below(400);
            let biased = rng.below(2) == 0;
            let bytes: Vec<u8> = (0..len).map(|_| if biased { ALPHABET[rng.below(ALPHABET.len())] } else { rng.next() as u8 }).collect();
            let result = parse_subtitles(&bytes, &mut |done, total| assert!(done <= total));
            check_invariants(&bytes, &result);
        }
    }

    #[test]
    fn mutated_subtitles_never_panic() {
        let seeds: Vec<Vec<u8>> = vec![
            THREE_CUE_SRT.as_bytes().to_vec(),
            THREE_CUE_VTT.as_bytes().to_vec(),
            include_bytes!("../../tests/fixtures/subtitles/sample.srt").to_vec(),
            include_bytes!("../../tests/fixtures/subtitles/sample.vtt").to_vec(),
            utf16(THREE_CUE_SRT, false, true),
            utf16(THREE_CUE_VTT, true, false),
            utf32(THREE_CUE_SRT, true),
        ];
        let mut rng = Rng(0xDEAD_BEEF_CAFE_F00D);
        let mut parsed_ok = 0;
        for round in 0..4000 {
            let mut bytes = seeds[round % seeds.len()].clone();
            for _ in 0..1 + rng.below(6) {
                let at = rng.below(bytes.len() + 1);
                match rng.below(4) {
                    0 if at < bytes.len() => bytes[at] = rng.next() as u8,
                    1 if at < bytes.len() => {
                        bytes.remove(at);
                    }
                    2 => bytes.insert(at, {
                        const INSERTS: &[u8] = b"0:,.->\n\r<>{\\&;";
                        INSERTS[rng.below(INSERTS.len())]
                    }),
                    _ => bytes.truncate(at),
                }
            }
            let result = parse_subtitles(&bytes, &mut |_, _| {});
            check_invariants(&bytes, &result);
            parsed_ok += usize::from(result.is_ok());
        }
        // The mutations must leave enough files readable for the check to mean something.
        assert!(parsed_ok > 1000, "only {parsed_ok} parsed");
    }

    #[test]
    fn unclosed_brackets_are_cleaned_in_linear_time() {
        // Quadratic scanning would take minutes here; each cue is over the text limit, so the error proves the text was cleaned.
        for soup in ["<a", "{\\", "<i>&amp", "&#"] {
            let text = format!("1\n00:00:01,000 --> 00:00:02,000\n{}\n", soup.repeat(1024 * 1024 / soup.len()));
            let started = std::time::Instant::now();
            assert!(matches!(parse(&text), Err(SubtitleError::BadCue { line: 2, .. })), "{soup}");
            assert!(started.elapsed() < std::time::Duration::from_secs(5), "{soup}: {:?}", started.elapsed());
        }
    }

    #[test]
    fn degenerate_large_inputs_stay_bounded() {
        // Millions of line endings, and one huge line: no per-line allocation, no panic.
        let newlines = "\r".repeat(4 * 1024 * 1024);
        assert_eq!(parse(&newlines), Err(SubtitleError::Empty));
        let huge_cue = format!("1\n00:00:01,000 --> 00:00:02,000\n{}\n", "a".repeat(2 * 1024 * 1024));
        assert!(matches!(parse(&huge_cue), Err(SubtitleError::BadCue { line: 2, .. })));
        // In SRT, text after blank lines joins the cue until it is too long; in WebVTT it is ignored with capped warnings.
        let blank_separated = format!("00:00:01,000 --> 00:00:02,000\nHi\n{}", "\nx\n".repeat(200_000));
        assert!(matches!(parse(&blank_separated), Err(SubtitleError::BadCue { line: 1, .. })));
        let parsed = parse_ok(&format!("WEBVTT\n\n00:01.000 --> 00:02.000\nHi\n{}", "\nx\n".repeat(200_000)));
        assert_eq!(texts(&parsed), ["Hi"]);
        assert_eq!(parsed.warnings.len(), MAX_WARNINGS + 1);
        assert_eq!(parsed.warnings[MAX_WARNINGS], "199900 more warnings like these were left out");
    }
}

//! Clip curation: turns one asset's per-bucket search matches (a sorted list of `(second, score)`)
//! into clips an editor can cut: runs of matching seconds become clips, which are optionally snapped
//! to shot boundaries, padded, held between a minimum and a maximum length, clamped to the asset,
//! and de-overlapped so an editor never gets the same footage twice.
//!
//! "Second" means one bucket of `bucket_ms` (1000 usually); the lists are indexed by bucket.
//! Everything here is total: saturating arithmetic, no indexing that can fail, and inputs that
//! break the contract (unsorted lists, duplicate seconds, NaN or non-positive scores, inverted
//! shots) are repaired or ignored rather than trusted, because they come from per-query data.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::{BTreeSet, VecDeque};

/// Snapping further than this (either edge) would change what the clip is about, so such an edge
/// stays where the matches put it.
pub const SNAP_MAX_EXTENSION_MS: u64 = 10_000;

/// A sequence span ("A then B") longer than this many buckets is not paired: no footage query means
/// "A, then B a day later", and materialising every second of such a span would cost memory for nothing.
pub const SEQUENCE_SPAN_MAX_BUCKETS: u64 = 86_400;

/// Upper bound on the seconds `sequence_seconds` returns, so pathological inputs (seconds spread
/// over centuries) cannot exhaust memory; the earliest seconds are kept.
pub const SEQUENCE_OUTPUT_MAX_SECONDS: usize = 1_000_000;

/// Used when `bucket_ms` is 0, which would otherwise collapse every clip to zero length.
const DEFAULT_BUCKET_MS: u64 = 1_000;

/// Weight of the length bonus in a clip's score: long runs are a little better than short ones
/// with the same mean, but a long weak run must not beat a short strong one.
const LENGTH_BONUS: f64 = 0.1;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScoredSecond {
    pub second: u64,
    pub score: f32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RawClip {
    pub start_ms: u64,
    pub end_ms: u64,
    pub score: f64,
    /// First matched second inside the clip, for evidence.
    pub first_second: u64,
    /// Last matched second inside the clip, for evidence.
    pub last_second: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct CurationOptions {
    /// Bucket width of the seconds lists; 0 is treated as 1000.
    pub bucket_ms: u64,
    /// Silence tolerated inside one clip.
    pub gap_ms: u64,
    /// Added before and after, after snapping.
    pub padding_ms: u64,
    /// Shorter clips are extended symmetrically (then clamped).
    pub min_length_ms: Option<u64>,
    /// Longer clips are cut to this length around their best-scoring window.
    pub max_length_ms: Option<u64>,
    pub snap_to_shots: bool,
    /// Clamp end; None: no upper clamp.
    pub asset_duration_ms: Option<u64>,
}

/// Consecutive seconds (gaps up to gap_ms) → clips. Score = mean second score × (1 + 0.1 ln(length in buckets)).
///
/// The mean is over the matched seconds; the length is the clip's span in buckets, gaps included.
pub fn build_clips(seconds: &[ScoredSecond], options: &CurationOptions) -> Vec<RawClip> {
    let seconds = normalized(seconds);
    let bucket = bucket_ms(options);
    runs(&seconds, bucket, options.gap_ms).iter().map(|run| run.clip(bucket)).collect()
}

/// The seconds of a [`best_clip_score`] pass did not ascend strictly: only [`build_clips`],
/// which repairs the list, can score them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotAscending;

/// The best score among the clips [`build_clips`] would make of `seconds` (`None`: no second
/// matches), in one pass and without allocating: a shard ranks every asset it matched by its
/// best clip but builds clips only for the few it keeps. The arithmetic is `build_clips`'s, so
/// the scores are equal to the bit.
pub fn best_clip_score(seconds: impl IntoIterator<Item = ScoredSecond>, options: &CurationOptions) -> Result<Option<f64>, NotAscending> {
    let bucket = bucket_ms(options);
    let mut best: Option<f64> = None;
    let mut current: Option<Run> = None;
    let mut previous: Option<u64> = None;
    for s in seconds {
        if previous.is_some_and(|p| s.second <= p) {
            return Err(NotAscending);
        }
        previous = Some(s.second);
        // `normalized` drops non-matches from an ascending list; they neither join nor split a run.
        if !is_match(&s) {
            continue;
        }
        if let Some(run) = current.as_mut() {
            let silence_ms = (s.second - run.last - 1).saturating_mul(bucket);
            if silence_ms <= options.gap_ms {
                run.end += 1;
                run.last = s.second;
                run.sum += f64::from(s.score);
                continue;
            }
            let score = run.score();
            best = Some(best.map_or(score, |b: f64| b.max(score)));
        }
        current = Some(Run { start: 0, end: 1, first: s.second, last: s.second, sum: f64::from(s.score) });
    }
    if let Some(run) = current {
        let score = run.score();
        best = Some(best.map_or(score, |b: f64| b.max(score)));
    }
    Ok(best)
}

/// Shots: sorted, possibly overlapping (start_ms, end_ms) intervals. Extend each clip's start back to the start of the shot
/// that contains it and its end forward to the end of the shot containing end_ms-1; a clip edge with no containing shot is
/// left alone. Never snap across more than `SNAP_MAX_EXTENSION_MS` on either side (then leave that edge unsnapped).
///
/// When overlapping shots both contain an edge, the edge goes to the farthest boundary within the cap: that boundary is
/// where the earliest (latest) of the shots begins (ends), so the cut falls outside all of them where possible.
pub fn snap_to_shots(clip: &mut RawClip, shots: &[(u64, u64)]) {
    snap_to_shots_within(clip, shots, SNAP_MAX_EXTENSION_MS);
}

/// `snap_to_shots` with an explicit cap on how far either edge may move.
pub fn snap_to_shots_within(clip: &mut RawClip, shots: &[(u64, u64)], max_extension_ms: u64) {
    ShotIndex::new(shots).snap(clip, max_extension_ms);
}

/// Padding, min/max length, clamping, in that order (snapping comes before, called by `curate`).
///
/// `seconds` is the asset's sorted list the clip was built from; the max-length cut looks for the best window among
/// the clip's own seconds (`first_second..=last_second`). Afterwards `first_second`/`last_second` are narrowed to the
/// matched seconds the shaped clip still overlaps, so evidence never points outside the clip. The score is kept: it
/// ranks the whole run the clip stands for.
pub fn shape(clip: &mut RawClip, seconds: &[ScoredSecond], options: &CurationOptions) {
    let lo = seconds.partition_point(|s| s.second < clip.first_second);
    // `max(lo)` keeps the slice valid even for an inverted evidence range or an unsorted list.
    let hi = seconds.partition_point(|s| s.second <= clip.last_second).max(lo);
    shape_own(clip, &seconds[lo..hi], options);
}

/// Removes clips that overlap a better clip (by score, ties: earlier start), keeps the rest sorted best first.
///
/// Greedy, best first: a clip is only removed by a better clip that is itself kept, so a clip whose better neighbour
/// was removed by an even better one survives (its footage is not in any kept clip).
pub fn suppress_overlaps(mut clips: Vec<RawClip>) -> Vec<RawClip> {
    clips.sort_by(rank);
    // Kept clips are pairwise disjoint, so sorted by start they are sorted by end too: the only kept clip that can
    // overlap [start, end) is the last one starting before `end`.
    let mut kept: BTreeSet<(u64, u64)> = BTreeSet::new();
    clips.retain(|clip| {
        let overlaps = kept.range(..(clip.end_ms, 0)).next_back().is_some_and(|&(_, end)| end > clip.start_ms);
        if !overlaps {
            kept.insert((clip.start_ms, clip.end_ms));
        }
        !overlaps
    });
    clips
}

/// The whole pipeline for one asset: build → (snap if options.snap_to_shots) → shape → suppress overlaps → best
/// `per_asset` clips, best first (ties: earlier start).
///
/// Clips that no longer overlap any matched second after shaping (matches at or past the asset's duration) are
/// dropped: an editor must always be able to see why a clip is there.
pub fn curate(seconds: &[ScoredSecond], shots: &[(u64, u64)], options: &CurationOptions, per_asset: usize) -> Vec<RawClip> {
    if per_asset == 0 {
        return Vec::new();
    }
    let seconds = normalized(seconds);
    let bucket = bucket_ms(options);
    // Indexed once per asset, so snapping every clip costs a binary search instead of a scan.
    let shots = options.snap_to_shots.then(|| ShotIndex::new(shots));
    let mut clips = Vec::new();
    for run in runs(&seconds, bucket, options.gap_ms) {
        let mut clip = run.clip(bucket);
        if let Some(shots) = &shots {
            shots.snap(&mut clip, SNAP_MAX_EXTENSION_MS);
        }
        if shape_own(&mut clip, &seconds[run.start..run.end], options) {
            clips.push(clip);
        }
    }
    let mut clips = suppress_overlaps(clips);
    clips.truncate(per_asset);
    clips
}

/// "A then B within N": A and B hits of one asset (sorted by second). For every A clip (built with options.gap_ms), pair
/// the B clip that starts soonest at or after the A clip's start (strictly after its first second; B may overlap the end
/// of A) and whose start is at most within_ms after A's end. Returns the seconds of [A.start, B.end) (every second in the
/// span, score = (mean A clip second score + mean B clip second score) / 2), merged and sorted, duplicates keep the max.
///
/// Spans longer than `SEQUENCE_SPAN_MAX_BUCKETS` are not paired and the output stops at `SEQUENCE_OUTPUT_MAX_SECONDS`.
pub fn sequence_seconds(a: &[ScoredSecond], b: &[ScoredSecond], within_ms: u64, options: &CurationOptions) -> Vec<ScoredSecond> {
    let bucket = bucket_ms(options);
    let (a, b) = (normalized(a), normalized(b));
    let (a_runs, b_runs) = (runs(&a, bucket, options.gap_ms), runs(&b, bucket, options.gap_ms));
    // Spans as (first second, last second, score). A runs ascend and the paired B index never goes back, so both the
    // starts and the ends of the spans ascend; the merge below relies on that.
    let mut spans: Vec<(u64, u64, f32)> = Vec::new();
    let mut next_b = 0;
    for a_run in &a_runs {
        while b_runs.get(next_b).is_some_and(|b_run| b_run.first <= a_run.first) {
            next_b += 1;
        }
        let Some(b_run) = b_runs.get(next_b) else { break };
        // A B run starting inside A saturates the distance to 0: overlapping A's end is allowed.
        let distance_ms = b_run.start_ms(bucket).saturating_sub(a_run.end_ms(bucket));
        let span_buckets = (b_run.last - a_run.first).saturating_add(1);
        if distance_ms > within_ms || span_buckets > SEQUENCE_SPAN_MAX_BUCKETS {
            continue;
        }
        spans.push((a_run.first, b_run.last, ((a_run.mean() + b_run.mean()) / 2.0) as f32));
    }
    merge_spans(&spans)
}

/// Seconds in both (score sum): merge-join of sorted lists.
pub fn intersect_seconds(lists: &[&[ScoredSecond]]) -> Vec<ScoredSecond> {
    let lists: Vec<Cow<'_, [ScoredSecond]>> = lists.iter().map(|list| normalized(list)).collect();
    // Driving the join from the shortest list bounds the work by it; the others are searched forward.
    let Some(driver) = lists.iter().min_by_key(|list| list.len()) else { return Vec::new() };
    let mut cursors = vec![0usize; lists.len()];
    let mut out = Vec::new();
    'seconds: for wanted in driver.iter() {
        let mut sum = 0.0f64;
        for (list, cursor) in lists.iter().zip(cursors.iter_mut()) {
            let rest = list.get(*cursor..).unwrap_or_default();
            *cursor += rest.partition_point(|s| s.second < wanted.second);
            match list.get(*cursor) {
                Some(s) if s.second == wanted.second => sum += f64::from(s.score),
                Some(_) => continue 'seconds,
                None => break 'seconds,
            }
        }
        out.push(ScoredSecond { second: wanted.second, score: to_score(sum) });
    }
    out
}

/// Seconds in either (score sum): merge of sorted lists.
pub fn union_seconds(lists: &[&[ScoredSecond]]) -> Vec<ScoredSecond> {
    let mut all: Vec<ScoredSecond> = Vec::with_capacity(lists.iter().map(|list| list.len()).sum());
    for list in lists {
        all.extend_from_slice(&normalized(list));
    }
    // A stable sort finds the sorted runs the lists already are, so this is a k-way merge in practice.
    all.sort_by_key(|s| s.second);
    let mut out: Vec<ScoredSecond> = Vec::new();
    let mut i = 0;
    while let Some(head) = all.get(i) {
        let group = all[i..].partition_point(|s| s.second == head.second);
        let sum: f64 = all[i..i + group].iter().map(|s| f64::from(s.score)).sum();
        out.push(ScoredSecond { second: head.second, score: to_score(sum) });
        i += group;
    }
    out
}

fn bucket_ms(options: &CurationOptions) -> u64 {
    if options.bucket_ms == 0 {
        DEFAULT_BUCKET_MS
    } else {
        options.bucket_ms
    }
}

/// A match is a finite positive score; anything else (NaN from a broken scorer, 0) matched nothing.
fn is_match(s: &ScoredSecond) -> bool {
    s.score.is_finite() && s.score > 0.0
}

/// The list as the contract promises it (strictly ascending seconds, only matches), borrowed when it already is
/// so the common case costs one scan. Duplicates keep the best score, as everywhere else in this module.
fn normalized(seconds: &[ScoredSecond]) -> Cow<'_, [ScoredSecond]> {
    if seconds.windows(2).all(|w| w[0].second < w[1].second) && seconds.iter().all(is_match) {
        return Cow::Borrowed(seconds);
    }
    let mut owned: Vec<ScoredSecond> = seconds.iter().copied().filter(is_match).collect();
    owned.sort_by(|x, y| x.second.cmp(&y.second).then(y.score.total_cmp(&x.score)));
    owned.dedup_by_key(|s| s.second);
    Cow::Owned(owned)
}

/// Sums of many scores can leave f32's range; the largest finite score still ranks them first.
fn to_score(sum: f64) -> f32 {
    (sum as f32).min(f32::MAX)
}

fn bucket_start_ms(second: u64, bucket: u64) -> u64 {
    second.saturating_mul(bucket)
}

fn bucket_end_ms(second: u64, bucket: u64) -> u64 {
    second.saturating_add(1).saturating_mul(bucket)
}

/// Whether the bucket of `second` overlaps [start_ms, end_ms).
fn overlaps(second: u64, bucket: u64, start_ms: u64, end_ms: u64) -> bool {
    bucket_start_ms(second, bucket) < end_ms && bucket_end_ms(second, bucket) > start_ms
}

/// One run of matched seconds: `seconds[start..end]` of a normalized list.
struct Run {
    start: usize,
    end: usize,
    first: u64,
    last: u64,
    sum: f64,
}

impl Run {
    fn mean(&self) -> f64 {
        // A run always holds at least one second; `max(1)` only guards the division.
        self.sum / (self.end - self.start).max(1) as f64
    }

    fn start_ms(&self, bucket: u64) -> u64 {
        bucket_start_ms(self.first, bucket)
    }

    fn end_ms(&self, bucket: u64) -> u64 {
        bucket_end_ms(self.last, bucket)
    }

    fn score(&self) -> f64 {
        let length_buckets = (self.last - self.first).saturating_add(1) as f64;
        self.mean() * (1.0 + LENGTH_BONUS * length_buckets.ln())
    }

    fn clip(&self, bucket: u64) -> RawClip {
        RawClip {
            start_ms: self.start_ms(bucket),
            end_ms: self.end_ms(bucket),
            score: self.score(),
            first_second: self.first,
            last_second: self.last,
        }
    }
}

/// Splits a normalized list where the silence between two matched seconds exceeds `gap_ms`.
fn runs(seconds: &[ScoredSecond], bucket: u64, gap_ms: u64) -> Vec<Run> {
    let mut runs: Vec<Run> = Vec::new();
    for (i, s) in seconds.iter().enumerate() {
        if let Some(run) = runs.last_mut() {
            // Seconds ascend strictly, so the silence is the empty buckets between the two.
            let silence_ms = (s.second - run.last - 1).saturating_mul(bucket);
            if silence_ms <= gap_ms {
                run.end = i + 1;
                run.last = s.second;
                run.sum += f64::from(s.score);
                continue;
            }
        }
        runs.push(Run { start: i, end: i + 1, first: s.second, last: s.second, sum: f64::from(s.score) });
    }
    runs
}

/// Shots sorted both ways, so each edge finds its candidates (shots with that boundary within the cap) by binary search.
struct ShotIndex {
    by_start: Vec<(u64, u64)>,
    by_end: Vec<(u64, u64)>,
}

impl ShotIndex {
    fn new(shots: &[(u64, u64)]) -> Self {
        // Empty and inverted shots contain nothing; sorting again costs little and survives unsorted input.
        let mut by_start: Vec<(u64, u64)> = shots.iter().copied().filter(|&(start, end)| start < end).collect();
        by_start.sort_unstable();
        let mut by_end = by_start.clone();
        by_end.sort_unstable_by_key(|&(start, end)| (end, start));
        ShotIndex { by_start, by_end }
    }

    fn snap(&self, clip: &mut RawClip, max_extension_ms: u64) {
        // Start: of the shots starting within the cap before the edge, the earliest that still contains it.
        let edge = clip.start_ms;
        let from = self.by_start.partition_point(|&(start, _)| start < edge.saturating_sub(max_extension_ms));
        let to = self.by_start.partition_point(|&(start, _)| start <= edge).max(from);
        if let Some(&(start, _)) = self.by_start[from..to].iter().find(|&&(_, end)| end > edge) {
            clip.start_ms = start;
        }
        // End: the shot containing the last millisecond (end_ms - 1); a clip ending exactly on a cut stays there.
        if let Some(last_ms) = clip.end_ms.checked_sub(1) {
            let edge = clip.end_ms;
            let from = self.by_end.partition_point(|&(_, end)| end < edge);
            let to = self.by_end.partition_point(|&(_, end)| end <= edge.saturating_add(max_extension_ms)).max(from);
            if let Some(&(_, end)) = self.by_end[from..to].iter().rev().find(|&&(start, _)| start <= last_ms) {
                clip.end_ms = end;
            }
        }
    }
}

/// `shape` on the clip's own seconds; false when the shaped clip no longer overlaps any matched second.
fn shape_own(clip: &mut RawClip, own: &[ScoredSecond], options: &CurationOptions) -> bool {
    let bucket = bucket_ms(options);
    let limit = options.asset_duration_ms.unwrap_or(u64::MAX);
    clip.end_ms = clip.end_ms.max(clip.start_ms);

    clip.start_ms = clip.start_ms.saturating_sub(options.padding_ms);
    clip.end_ms = clip.end_ms.saturating_add(options.padding_ms);

    if let Some(min_length) = options.min_length_ms {
        extend_to_min(clip, min_length, limit);
    }

    if let Some(max_length) = options.max_length_ms {
        // Footage past the asset's end is clamped away below, so it must not count towards the length nor hold the cut.
        let end = clip.end_ms.min(limit);
        if end.saturating_sub(clip.start_ms) > max_length {
            // Only seconds the clip still shows can hold the cut (a match past the asset's end would pull it away).
            let from = own.partition_point(|s| bucket_end_ms(s.second, bucket) <= clip.start_ms);
            let to = own.partition_point(|s| bucket_start_ms(s.second, bucket) < end).max(from);
            let (content_start, content_end) = best_window(&own[from..to], bucket, max_length)
                .unwrap_or((bucket_start_ms(clip.first_second, bucket), bucket_end_ms(clip.last_second, bucket)));
            let content_length = content_end.saturating_sub(content_start);
            // Centre the cut on the best window so its context is shared evenly before and after.
            let centred = if content_length <= max_length {
                content_start.saturating_sub((max_length - content_length) / 2)
            } else {
                content_start + (content_length - max_length) / 2
            };
            clip.start_ms = centred.max(clip.start_ms).min(end - max_length);
            clip.end_ms = clip.start_ms + max_length;
        }
    }

    clip.end_ms = clip.end_ms.min(limit);
    clip.start_ms = clip.start_ms.min(clip.end_ms);

    // An empty clip (a zero maximum, a zero duration) shows nothing, whatever its position.
    if clip.start_ms == clip.end_ms {
        return false;
    }
    let inside = |s: &ScoredSecond| is_match(s) && overlaps(s.second, bucket, clip.start_ms, clip.end_ms);
    match (own.iter().find(|s| inside(s)), own.iter().rev().find(|s| inside(s))) {
        (Some(first), Some(last)) => {
            clip.first_second = first.second;
            clip.last_second = last.second;
            true
        }
        _ => false,
    }
}

/// Grows the clip to `min_length` around its centre. Where one side hits 0 or `limit`, the other side takes the rest,
/// so a clip at the very start of an asset still gets its minimum length when the asset is long enough.
fn extend_to_min(clip: &mut RawClip, min_length: u64, limit: u64) {
    let length = clip.end_ms - clip.start_ms;
    if length >= min_length {
        return;
    }
    let extra = min_length - length;
    let start = clip.start_ms.saturating_sub(extra / 2);
    // From the (possibly 0-saturated) start, so a shortfall before the clip is added after it.
    let end = start.saturating_add(min_length);
    if end > limit && clip.end_ms <= limit {
        clip.start_ms = limit.saturating_sub(min_length).min(clip.start_ms);
        clip.end_ms = limit;
    } else {
        clip.start_ms = start;
        clip.end_ms = end;
    }
}

/// The run of the clip's seconds fitting in `max_length_ms` with the highest summed score (ties: earliest), as the
/// [start, end) of its buckets. When not even one bucket fits, the best single second. None without matched seconds.
fn best_window(own: &[ScoredSecond], bucket: u64, max_length_ms: u64) -> Option<(u64, u64)> {
    if !own.iter().any(is_match) {
        return None;
    }
    let score = |s: &ScoredSecond| if is_match(s) { f64::from(s.score) } else { 0.0 };
    let whole_buckets = max_length_ms / bucket;
    let mut best: Option<(f64, usize, usize)> = None;
    let (mut end, mut sum) = (0usize, 0.0f64);
    for (i, first) in own.iter().enumerate() {
        // Two pointers: `end` only moves forward, so the whole scan is linear in the clip's seconds.
        while let Some(next) = own.get(end) {
            if end > i && next.second.saturating_sub(first.second) >= whole_buckets {
                break;
            }
            sum += score(next);
            end += 1;
        }
        if best.map_or(true, |(best_sum, _, _)| sum > best_sum) {
            best = Some((sum, i, end));
        }
        sum -= score(first);
    }
    let (_, first, end) = best?;
    let (first, last) = (own.get(first)?, own.get(end.checked_sub(1)?)?);
    Some((bucket_start_ms(first.second, bucket), bucket_end_ms(last.second, bucket)))
}

/// Every second of the spans, best span score where they overlap. Both starts and ends of `spans` ascend, so the spans
/// covering a second form a sliding window and a monotonic deque yields its maximum in amortised O(1).
fn merge_spans(spans: &[(u64, u64, f32)]) -> Vec<ScoredSecond> {
    let mut out = Vec::new();
    let Some(&(mut second, _, _)) = spans.first() else { return out };
    let mut window: VecDeque<usize> = VecDeque::new();
    let mut next = 0;
    loop {
        while let Some(&(_, _, score)) = spans.get(next).filter(|&&(start, _, _)| start <= second) {
            // A later span ends no earlier, so a weaker earlier one can never be the maximum again.
            while window.back().is_some_and(|&i| spans[i].2 <= score) {
                window.pop_back();
            }
            window.push_back(next);
            next += 1;
        }
        while window.front().is_some_and(|&i| spans[i].1 < second) {
            window.pop_front();
        }
        match window.front() {
            Some(&i) => {
                out.push(ScoredSecond { second, score: spans[i].2 });
                if out.len() >= SEQUENCE_OUTPUT_MAX_SECONDS || second == u64::MAX {
                    break;
                }
                second += 1;
            }
            None => match spans.get(next) {
                Some(&(start, _, _)) => second = start,
                None => break,
            },
        }
    }
    out
}

/// Best first: higher score (NaN last), then earlier start; the remaining fields only make the order total.
fn rank(x: &RawClip, y: &RawClip) -> Ordering {
    let key = |score: f64| if score.is_nan() { f64::NEG_INFINITY } else { score };
    key(y.score)
        .total_cmp(&key(x.score))
        .then(x.start_ms.cmp(&y.start_ms))
        .then(x.end_ms.cmp(&y.end_ms))
        .then(x.first_second.cmp(&y.first_second))
        .then(x.last_second.cmp(&y.last_second))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    fn secs(list: &[(u64, f32)]) -> Vec<ScoredSecond> {
        list.iter().map(|&(second, score)| ScoredSecond { second, score }).collect()
    }

    fn ones(seconds: impl IntoIterator<Item = u64>) -> Vec<ScoredSecond> {
        seconds.into_iter().map(|second| ScoredSecond { second, score: 1.0 }).collect()
    }

    fn options() -> CurationOptions {
        CurationOptions { bucket_ms: 1000, ..CurationOptions::default() }
    }

    fn clip(start_ms: u64, end_ms: u64, score: f64) -> RawClip {
        RawClip { start_ms, end_ms, score, first_second: start_ms / 1000, last_second: end_ms.saturating_sub(1) / 1000 }
    }

    fn span(c: &RawClip) -> (u64, u64) {
        (c.start_ms, c.end_ms)
    }

    fn spans(clips: &[RawClip]) -> Vec<(u64, u64)> {
        clips.iter().map(span).collect()
    }

    fn approx(x: f64, y: f64) -> bool {
        (x - y).abs() < 1e-9
    }

    // ---- build_clips ----

    #[test]
    fn consecutive_seconds_form_one_bucket_aligned_clip_scored_by_mean_and_length() {
        let clips = build_clips(&secs(&[(3, 1.0), (4, 2.0), (5, 3.0)]), &options());
        assert_eq!(clips.len(), 1);
        assert_eq!((clips[0].start_ms, clips[0].end_ms, clips[0].first_second, clips[0].last_second), (3000, 6000, 3, 5));
        assert!(approx(clips[0].score, 2.0 * (1.0 + 0.1 * 3f64.ln())));
        // A single second has no length bonus: ln 1 = 0.
        let single = build_clips(&secs(&[(7, 0.5)]), &options());
        assert_eq!(single, vec![RawClip { start_ms: 7000, end_ms: 8000, score: 0.5, first_second: 7, last_second: 7 }]);
    }

    #[test]
    fn gap_tolerance_is_the_silence_between_matched_seconds() {
        let seconds = ones([0, 1, 3]);
        let with_gap = |gap_ms| build_clips(&seconds, &CurationOptions { gap_ms, ..options() });
        assert_eq!(spans(&with_gap(0)), vec![(0, 2000), (3000, 4000)]);
        assert_eq!(spans(&with_gap(999)), vec![(0, 2000), (3000, 4000)]);
        let merged = with_gap(1000);
        assert_eq!(spans(&merged), vec![(0, 4000)]);
        // Mean over the three matched seconds, length over the four-bucket span.
        assert!(approx(merged[0].score, 1.0 + 0.1 * 4f64.ln()));
        let two_missing = ones([0, 3]);
        assert_eq!(build_clips(&two_missing, &CurationOptions { gap_ms: 1999, ..options() }).len(), 2);
        assert_eq!(spans(&build_clips(&two_missing, &CurationOptions { gap_ms: 2000, ..options() })), vec![(0, 4000)]);
    }

    #[test]
    fn bucket_width_scales_clips_and_zero_means_one_second() {
        assert_eq!(spans(&build_clips(&ones([2, 3]), &CurationOptions { bucket_ms: 500, ..options() })), vec![(1000, 2000)]);
        assert_eq!(spans(&build_clips(&ones([2, 3]), &CurationOptions::default())), vec![(2000, 4000)]);
        // Gap in ms, so two missing 500 ms buckets fit in a 1000 ms gap.
        let options = CurationOptions { bucket_ms: 500, gap_ms: 1000, ..options() };
        assert_eq!(spans(&build_clips(&ones([0, 3]), &options)), vec![(0, 2000)]);
    }

    #[test]
    fn contract_breaking_seconds_are_repaired() {
        // Unsorted, a duplicate (best kept), NaN, zero and negative scores (not matches).
        let seconds = secs(&[(5, 1.0), (3, 2.0), (5, 3.0), (4, f32::NAN), (6, 0.0), (7, -1.0), (8, f32::INFINITY)]);
        let clips = build_clips(&seconds, &options());
        assert_eq!(spans(&clips), vec![(3000, 4000), (5000, 6000)]);
        assert_eq!((clips[0].score, clips[1].score), (2.0, 3.0));
        assert!(build_clips(&[], &options()).is_empty());
    }

    // ---- snap_to_shots ----

    #[test]
    fn snapping_extends_both_edges_to_the_containing_shots() {
        let shots = [(0, 4000), (4000, 6000), (6000, 9000), (9000, 12000)];
        let mut c = clip(5000, 8000, 1.0);
        snap_to_shots(&mut c, &shots);
        assert_eq!(span(&c), (4000, 9000));
        // Evidence stays the matched seconds.
        assert_eq!((c.first_second, c.last_second), (5, 7));
        // An edge already on a cut stays: the end looks at the shot holding end_ms - 1.
        let mut on_cuts = clip(4000, 6000, 1.0);
        snap_to_shots(&mut on_cuts, &shots);
        assert_eq!(span(&on_cuts), (4000, 6000));
    }

    #[test]
    fn an_edge_without_a_containing_shot_is_left_alone() {
        let mut c = clip(5000, 8000, 1.0);
        snap_to_shots(&mut c, &[(6000, 7000)]);
        assert_eq!(span(&c), (5000, 8000));
        snap_to_shots(&mut c, &[(0, 6000)]);
        assert_eq!(span(&c), (0, 8000));
        let mut c = clip(5000, 8000, 1.0);
        snap_to_shots(&mut c, &[]);
        assert_eq!(span(&c), (5000, 8000));
    }

    #[test]
    fn overlapping_shots_snap_to_the_farthest_boundary_within_the_cap() {
        let mut c = clip(6000, 8000, 1.0);
        snap_to_shots(&mut c, &[(0, 7000), (3000, 9000), (5000, 12000)]);
        assert_eq!(span(&c), (0, 12000));
        // The earliest containing shot is too far back; the next one is not.
        let mut c = clip(15_000, 16_000, 1.0);
        snap_to_shots(&mut c, &[(0, 20_000), (8000, 20_000)]);
        assert_eq!(span(&c), (8000, 20_000));
    }

    #[test]
    fn snapping_never_moves_an_edge_beyond_the_cap() {
        let mut c = clip(15_000, 16_000, 1.0);
        snap_to_shots(&mut c, &[(0, 20_000)]);
        assert_eq!(span(&c), (15_000, 20_000), "15 s back is too far, 4 s forward is fine");
        let mut c = clip(15_000, 16_000, 1.0);
        snap_to_shots(&mut c, &[(5000, 30_000)]);
        assert_eq!(span(&c), (5000, 16_000), "exactly the cap back snaps, 14 s forward does not");
        let mut c = clip(15_000, 16_000, 1.0);
        snap_to_shots_within(&mut c, &[(14_000, 17_000)], 999);
        assert_eq!(span(&c), (15_000, 16_000));
        snap_to_shots_within(&mut c, &[(14_000, 17_000)], 1000);
        assert_eq!(span(&c), (14_000, 17_000));
    }

    #[test]
    fn unsorted_empty_and_inverted_shots_do_not_confuse_snapping() {
        let mut c = clip(5000, 8000, 1.0);
        snap_to_shots(&mut c, &[(6000, 9000), (9000, 1000), (4000, 4000), (3000, 6000)]);
        assert_eq!(span(&c), (3000, 9000));
    }

    // ---- shape ----

    #[test]
    fn padding_is_added_around_and_never_goes_below_zero() {
        let seconds = ones([0, 1, 5]);
        let mut at_zero = clip(0, 2000, 1.0);
        shape(&mut at_zero, &seconds, &CurationOptions { padding_ms: 1500, ..options() });
        assert_eq!(span(&at_zero), (0, 3500));
        let mut inside = clip(5000, 6000, 1.0);
        shape(&mut inside, &seconds, &CurationOptions { padding_ms: 1000, ..options() });
        assert_eq!(span(&inside), (4000, 7000));
    }

    #[test]
    fn short_clips_are_extended_symmetrically() {
        let seconds = ones(0..100);
        let mut c = clip(10_000, 12_000, 1.0);
        shape(&mut c, &seconds, &CurationOptions { min_length_ms: Some(6000), ..options() });
        assert_eq!(span(&c), (8000, 14_000));
        // An odd extension gives the extra millisecond to the end.
        let mut c = clip(10_000, 11_000, 1.0);
        shape(&mut c, &seconds, &CurationOptions { min_length_ms: Some(4001), ..options() });
        assert_eq!(span(&c), (8500, 12_501));
        // Long enough already: untouched.
        let mut c = clip(10_000, 20_000, 1.0);
        shape(&mut c, &seconds, &CurationOptions { min_length_ms: Some(4000), ..options() });
        assert_eq!(span(&c), (10_000, 20_000));
    }

    #[test]
    fn min_length_at_the_asset_edges_takes_the_rest_from_the_other_side() {
        let seconds = ones(0..10);
        let mut c = clip(1000, 2000, 1.0);
        shape(&mut c, &seconds, &CurationOptions { min_length_ms: Some(5000), ..options() });
        assert_eq!(span(&c), (0, 5000));
        let mut c = clip(9000, 10_000, 1.0);
        shape(&mut c, &seconds, &CurationOptions { min_length_ms: Some(4000), asset_duration_ms: Some(10_000), ..options() });
        assert_eq!(span(&c), (6000, 10_000));
        // Longer than the asset: the whole asset.
        let mut c = clip(1000, 2000, 1.0);
        shape(&mut c, &seconds, &CurationOptions { min_length_ms: Some(10_000), asset_duration_ms: Some(3000), ..options() });
        assert_eq!(span(&c), (0, 3000));
    }

    /// Seconds 0..=9 scoring 1, except 6 and 7 scoring 5.
    fn peaked() -> Vec<ScoredSecond> {
        (0..10).map(|second| ScoredSecond { second, score: if second == 6 || second == 7 { 5.0 } else { 1.0 } }).collect()
    }

    #[test]
    fn long_clips_are_cut_around_their_best_window() {
        let built = build_clips(&peaked(), &options());
        assert_eq!(spans(&built), vec![(0, 10_000)]);
        let cut = |max| {
            let mut c = built[0].clone();
            shape(&mut c, &peaked(), &CurationOptions { max_length_ms: Some(max), ..options() });
            c
        };
        let two = cut(2000);
        assert_eq!((span(&two), two.first_second, two.last_second), ((6000, 8000), 6, 7));
        assert_eq!(two.score, built[0].score, "the score still ranks the whole run");
        // {5,6,7} and {6,7,8} tie: the earlier wins.
        assert_eq!(span(&cut(3000)), (5000, 8000));
        // Slack around the best window is shared evenly.
        assert_eq!(span(&cut(3500)), (4750, 8250));
        // Shorter than a bucket: the middle of the best second.
        let sub = cut(400);
        assert_eq!((span(&sub), sub.first_second, sub.last_second), ((6300, 6700), 6, 6));
        // Not longer than the maximum: untouched.
        assert_eq!(span(&cut(10_000)), (0, 10_000));
    }

    #[test]
    fn the_cut_stays_inside_the_clip() {
        let seconds = secs(&[(10, 9.0), (11, 1.0), (12, 1.0), (13, 1.0), (14, 1.0)]);
        let mut c = build_clips(&seconds, &options()).remove(0);
        shape(&mut c, &seconds, &CurationOptions { max_length_ms: Some(2500), ..options() });
        assert_eq!(span(&c), (10_000, 12_500));
        let at_zero = secs(&[(0, 9.0), (1, 1.0), (2, 1.0), (3, 1.0)]);
        let mut c = build_clips(&at_zero, &options()).remove(0);
        shape(&mut c, &at_zero, &CurationOptions { max_length_ms: Some(2500), ..options() });
        assert_eq!(span(&c), (0, 2500));
    }

    #[test]
    fn max_length_wins_over_min_length_and_applies_after_padding() {
        let mut c = build_clips(&peaked(), &options()).remove(0);
        let options = CurationOptions { padding_ms: 3000, min_length_ms: Some(20_000), max_length_ms: Some(4000), ..options() };
        shape(&mut c, &peaked(), &options);
        assert_eq!(span(&c), (4000, 8000), "{{4,5,6,7}} is the earliest of the tied best windows");
    }

    #[test]
    fn shaped_clips_are_clamped_to_the_asset() {
        let seconds = ones([8, 9]);
        let mut c = build_clips(&seconds, &options()).remove(0);
        shape(&mut c, &seconds, &CurationOptions { padding_ms: 2000, asset_duration_ms: Some(10_500), ..options() });
        assert_eq!(span(&c), (6000, 10_500));
        // The cut only considers what the asset still shows.
        let seconds: Vec<_> = (0..10)
            .map(|second| ScoredSecond { second, score: [1.0, 1.0, 1.0, 4.0, 1.0, 1.0, 1.0, 9.0, 9.0, 1.0][second as usize] })
            .collect();
        let mut c = build_clips(&seconds, &options()).remove(0);
        shape(&mut c, &seconds, &CurationOptions { max_length_ms: Some(3000), asset_duration_ms: Some(5000), ..options() });
        assert_eq!((span(&c), c.first_second, c.last_second), ((1000, 4000), 1, 3));
    }

    #[test]
    fn shape_finds_the_clip_seconds_in_the_whole_asset_list() {
        let seconds = secs(&[(0, 9.0), (1, 9.0), (10, 1.0), (11, 1.0), (12, 3.0), (13, 1.0), (20, 9.0)]);
        let clips = build_clips(&seconds, &options());
        let mut middle = clips[1].clone();
        shape(&mut middle, &seconds, &CurationOptions { max_length_ms: Some(1000), ..options() });
        assert_eq!((span(&middle), middle.first_second, middle.last_second), ((12_000, 13_000), 12, 12));
    }

    // ---- suppress_overlaps ----

    #[test]
    fn overlap_suppression_keeps_the_best_clip() {
        let kept = suppress_overlaps(vec![clip(0, 5000, 1.0), clip(4000, 8000, 2.0), clip(8000, 9000, 0.5)]);
        // Touching (end == start) is not overlapping.
        assert_eq!(spans(&kept), vec![(4000, 8000), (8000, 9000)]);
        // Ties: the earlier start wins, and orders first.
        let tied = suppress_overlaps(vec![clip(1000, 3000, 1.0), clip(0, 2000, 1.0), clip(5000, 6000, 1.0), clip(4000, 5000, 1.0)]);
        assert_eq!(spans(&tied), vec![(0, 2000), (4000, 5000), (5000, 6000)]);
        // Only kept clips suppress: C survives though B overlapped it, because A removed B.
        let chain = suppress_overlaps(vec![clip(12, 20, 1.0), clip(5, 15, 2.0), clip(0, 10, 3.0)]);
        assert_eq!(spans(&chain), vec![(0, 10), (12, 20)]);
        assert!(suppress_overlaps(vec![]).is_empty());
    }

    // ---- curate ----

    #[test]
    fn curate_runs_the_whole_pipeline() {
        let seconds = secs(&[(2, 1.0), (3, 1.0), (4, 1.0), (10, 3.0), (11, 3.0), (30, 0.5)]);
        let shots = [(0, 2500), (2500, 6000), (9500, 12_500), (25_000, 40_000)];
        let options = CurationOptions { padding_ms: 1000, snap_to_shots: true, asset_duration_ms: Some(35_000), ..options() };
        let all = curate(&seconds, &shots, &options, 10);
        // Snapped to [0,6000), [9500,12500), [25000,40000); padded; the last clamped to the asset.
        assert_eq!(spans(&all), vec![(8500, 13_500), (0, 7000), (24_000, 35_000)]);
        assert!(approx(all[0].score, 3.0 * (1.0 + 0.1 * 2f64.ln())));
        assert!(approx(all[1].score, 1.0 + 0.1 * 3f64.ln()));
        assert_eq!((all[0].first_second, all[0].last_second), (10, 11));
        assert_eq!(curate(&seconds, &shots, &options, 2), all[..2].to_vec());
        assert!(curate(&seconds, &shots, &options, 0).is_empty());
        // More padding makes the first two overlap: the better survives.
        let padded = curate(&seconds, &shots, &CurationOptions { padding_ms: 2000, ..options }, 10);
        assert_eq!(spans(&padded), vec![(7500, 14_500), (23_000, 35_000)]);
        // Without snapping the shots are ignored.
        let unsnapped = curate(&seconds, &shots, &CurationOptions { snap_to_shots: false, ..options }, 10);
        assert_eq!(spans(&unsnapped), vec![(9000, 13_000), (1000, 6000), (29_000, 32_000)]);
    }

    #[test]
    fn curate_drops_clips_whose_matches_lie_past_the_asset() {
        let seconds = ones([3, 40]);
        let options = CurationOptions { padding_ms: 5000, asset_duration_ms: Some(38_000), ..options() };
        assert_eq!(spans(&curate(&seconds, &[], &options, 10)), vec![(0, 9000)]);
    }

    // ---- sequence_seconds ----

    fn flat(seconds: &[ScoredSecond]) -> Vec<(u64, f32)> {
        seconds.iter().map(|s| (s.second, s.score)).collect()
    }

    #[test]
    fn sequence_pairs_a_with_the_next_b_within_the_window() {
        let out = sequence_seconds(&ones([10, 11]), &secs(&[(14, 3.0)]), 3000, &options());
        assert_eq!(flat(&out), (10..=14).map(|s| (s, 2.0)).collect::<Vec<_>>());
        // The soonest B is the one paired.
        assert_eq!(flat(&sequence_seconds(&ones([0]), &ones([2, 4]), 10_000, &options())), vec![(0, 1.0), (1, 1.0), (2, 1.0)]);
    }

    #[test]
    fn sequence_does_not_pair_b_before_a() {
        assert!(sequence_seconds(&ones([10]), &ones([5]), 100_000, &options()).is_empty());
        // Starting on A's first second is not after it.
        assert!(sequence_seconds(&ones([10]), &ones([10]), 100_000, &options()).is_empty());
        // A B run that starts before A but lasts into it is still before A.
        assert!(sequence_seconds(&ones([10]), &ones([8, 9, 10, 11]), 100_000, &options()).is_empty());
    }

    #[test]
    fn sequence_does_not_pair_b_too_far() {
        // A ends at 11 000, B starts at 15 000: 4 s later.
        assert!(sequence_seconds(&ones([10]), &ones([15]), 3000, &options()).is_empty());
        assert_eq!(sequence_seconds(&ones([10]), &ones([15]), 4000, &options()).len(), 6);
        // Spans beyond a day are never materialised.
        assert!(sequence_seconds(&ones([0]), &ones([100_000]), u64::MAX, &options()).is_empty());
    }

    #[test]
    fn sequence_pairs_b_overlapping_the_end_of_a() {
        let out = sequence_seconds(&ones([10, 11, 12]), &ones([12, 13]), 0, &options());
        assert_eq!(out.iter().map(|s| s.second).collect::<Vec<_>>(), vec![10, 11, 12, 13]);
        // A's clip is built with gap_ms; the span ends with B even inside A.
        let gapped = CurationOptions { gap_ms: 1000, ..options() };
        assert_eq!(sequence_seconds(&ones([0, 2]), &ones([1]), 0, &gapped).len(), 2);
    }

    #[test]
    fn sequence_handles_several_a_clips() {
        let a = secs(&[(0, 1.0), (20, 2.0)]);
        let b = secs(&[(2, 3.0), (23, 4.0)]);
        let out = sequence_seconds(&a, &b, 5000, &options());
        let expected: Vec<(u64, f32)> = (0..=2).map(|s| (s, 2.0)).chain((20..=23).map(|s| (s, 3.0))).collect();
        assert_eq!(flat(&out), expected);
        // Two A clips pairing one B: the overlap keeps the max.
        let out = sequence_seconds(&secs(&[(0, 1.0), (2, 3.0)]), &ones([5]), 10_000, &options());
        assert_eq!(flat(&out), vec![(0, 1.0), (1, 1.0), (2, 2.0), (3, 2.0), (4, 2.0), (5, 2.0)]);
        // An A too far from every B is skipped without stopping the later ones.
        let out = sequence_seconds(&ones([0, 50]), &ones([40, 52]), 3000, &options());
        assert_eq!(out.iter().map(|s| s.second).collect::<Vec<_>>(), vec![50, 51, 52]);
    }

    // ---- intersect / union ----

    #[test]
    fn intersect_and_union_sum_scores() {
        let a = secs(&[(1, 1.0), (2, 1.0), (3, 1.0)]);
        let b = secs(&[(2, 2.0), (3, 2.0), (4, 2.0)]);
        let c = secs(&[(3, 4.0), (4, 4.0)]);
        assert_eq!(flat(&intersect_seconds(&[&a, &b])), vec![(2, 3.0), (3, 3.0)]);
        assert_eq!(flat(&intersect_seconds(&[&a, &b, &c])), vec![(3, 7.0)]);
        assert_eq!(flat(&union_seconds(&[&a, &b])), vec![(1, 1.0), (2, 3.0), (3, 3.0), (4, 2.0)]);
        assert_eq!(flat(&union_seconds(&[&a])), flat(&a));
        assert_eq!(flat(&intersect_seconds(&[&a])), flat(&a));
        assert!(intersect_seconds(&[]).is_empty() && union_seconds(&[]).is_empty());
        assert!(intersect_seconds(&[&a, &[]]).is_empty());
        // Sums past f32's range stay finite.
        let huge = secs(&[(0, f32::MAX)]);
        assert_eq!(flat(&union_seconds(&[&huge, &huge])), vec![(0, f32::MAX)]);
    }

    #[test]
    fn extreme_inputs_do_not_panic() {
        let extreme = secs(&[(0, 1.0), (1, f32::MAX), (u64::MAX / 1000, 1.0), (u64::MAX - 1, 1.0), (u64::MAX, 1.0)]);
        let shots = [(0, u64::MAX), (u64::MAX - 5, u64::MAX), (u64::MAX, 0)];
        for bucket_ms in [0, 1, 1000, u64::MAX] {
            for gap_ms in [0, u64::MAX] {
                for (min, max) in [(None, None), (Some(u64::MAX), Some(0)), (Some(0), Some(u64::MAX)), (Some(5000), Some(1))] {
                    for duration in [None, Some(0), Some(1), Some(u64::MAX)] {
                        let options = CurationOptions {
                            bucket_ms,
                            gap_ms,
                            padding_ms: u64::MAX,
                            min_length_ms: min,
                            max_length_ms: max,
                            snap_to_shots: true,
                            asset_duration_ms: duration,
                        };
                        for clip in curate(&extreme, &shots, &options, usize::MAX) {
                            assert!(clip.start_ms < clip.end_ms && clip.end_ms <= duration.unwrap_or(u64::MAX), "{clip:?} {options:?}");
                        }
                        let _ = sequence_seconds(&extreme, &extreme, u64::MAX, &options);
                        let mut odd = RawClip { start_ms: 9, end_ms: 3, score: f64::NAN, first_second: u64::MAX, last_second: 0 };
                        shape(&mut odd, &extreme, &options);
                        snap_to_shots(&mut odd, &shots);
                    }
                }
            }
        }
        let _ = intersect_seconds(&[&extreme, &extreme]);
        let _ = union_seconds(&[&extreme, &extreme]);
        assert!(curate(&[], &[], &CurationOptions::default(), 5).is_empty());
        let near_end = sequence_seconds(&ones([u64::MAX - 1]), &ones([u64::MAX]), u64::MAX, &CurationOptions { bucket_ms: 1, ..options() });
        assert_eq!(near_end.iter().map(|s| s.second).collect::<Vec<_>>(), vec![u64::MAX - 1, u64::MAX]);
    }

    // ---- properties ----

    fn arbitrary_seconds(max_second: u64) -> impl Strategy<Value = Vec<ScoredSecond>> {
        prop::collection::btree_map(0..max_second, 0.01f32..10.0, 0..60)
            .prop_map(|map| map.into_iter().map(|(second, score)| ScoredSecond { second, score }).collect())
    }

    fn arbitrary_shots() -> impl Strategy<Value = Vec<(u64, u64)>> {
        prop::collection::vec((0u64..130_000, 1u64..25_000), 0..30).prop_map(|shots| {
            let mut shots: Vec<(u64, u64)> = shots.into_iter().map(|(start, length)| (start, start + length)).collect();
            shots.sort_unstable();
            shots
        })
    }

    fn arbitrary_options() -> impl Strategy<Value = CurationOptions> {
        (
            prop::sample::select(vec![0u64, 250, 1000, 2000]),
            0u64..6000,
            0u64..6000,
            prop::option::of(0u64..20_000),
            prop::option::of(0u64..20_000),
            any::<bool>(),
            prop::option::of(0u64..150_000),
        )
            .prop_map(|(bucket_ms, gap_ms, padding_ms, min_length_ms, max_length_ms, snap_to_shots, asset_duration_ms)| {
                CurationOptions { bucket_ms, gap_ms, padding_ms, min_length_ms, max_length_ms, snap_to_shots, asset_duration_ms }
            })
    }

    fn arbitrary_clips() -> impl Strategy<Value = Vec<RawClip>> {
        prop::collection::vec((0u64..100, 0u64..20, 0u8..5), 0..40).prop_map(|clips| {
            clips.into_iter().map(|(start, length, score)| clip(start * 100, (start + length) * 100, f64::from(score))).collect()
        })
    }

    /// Straight from the definition: every clip against every better kept clip.
    fn naive_suppress(clips: &[RawClip]) -> Vec<RawClip> {
        let mut sorted = clips.to_vec();
        sorted.sort_by(rank);
        let mut kept: Vec<RawClip> = Vec::new();
        for c in sorted {
            if kept.iter().all(|k| !(k.start_ms < c.end_ms && c.start_ms < k.end_ms)) {
                kept.push(c);
            }
        }
        kept
    }

    /// Straight from the definition: scan every shot for each edge.
    fn naive_snap(clip: &mut RawClip, shots: &[(u64, u64)], cap: u64) {
        let (start, end) = (clip.start_ms, clip.end_ms);
        let valid = || shots.iter().filter(|&&(s, e)| s < e);
        if let Some(s) = valid().filter(|&&(s, e)| s <= start && start < e && start - s <= cap).map(|&(s, _)| s).min() {
            clip.start_ms = s;
        }
        if end > 0 {
            if let Some(e) = valid().filter(|&&(s, e)| s < end && end - 1 < e && e - end <= cap).map(|&(_, e)| e).max() {
                clip.end_ms = e;
            }
        }
    }

    /// Straight from the definition: every span, every second, the max.
    fn naive_sequence(a: &[ScoredSecond], b: &[ScoredSecond], within_ms: u64, options: &CurationOptions) -> Vec<ScoredSecond> {
        let mean = |clip: &RawClip, seconds: &[ScoredSecond]| {
            let own: Vec<f64> =
                seconds.iter().filter(|s| (clip.first_second..=clip.last_second).contains(&s.second)).map(|s| f64::from(s.score)).collect();
            own.iter().sum::<f64>() / own.len() as f64
        };
        let (a_clips, b_clips) = (build_clips(a, options), build_clips(b, options));
        let mut out: BTreeMap<u64, f32> = BTreeMap::new();
        for a_clip in &a_clips {
            let paired = b_clips.iter().filter(|b_clip| b_clip.first_second > a_clip.first_second).min_by_key(|b_clip| b_clip.start_ms);
            if let Some(b_clip) = paired.filter(|b_clip| b_clip.start_ms <= a_clip.end_ms + within_ms) {
                let score = ((mean(a_clip, a) + mean(b_clip, b)) / 2.0) as f32;
                for second in a_clip.first_second..=b_clip.last_second {
                    let entry = out.entry(second).or_insert(score);
                    *entry = entry.max(score);
                }
            }
        }
        out.into_iter().map(|(second, score)| ScoredSecond { second, score }).collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn curated_clips_hold_their_invariants(
            seconds in arbitrary_seconds(120),
            shots in arbitrary_shots(),
            options in arbitrary_options(),
            per_asset in 0usize..8,
        ) {
            let clips = curate(&seconds, &shots, &options, per_asset);
            prop_assert!(clips.len() <= per_asset);
            prop_assert_eq!(&clips, &curate(&seconds, &shots, &options, per_asset), "deterministic");
            let bucket = if options.bucket_ms == 0 { 1000 } else { options.bucket_ms };
            for (i, c) in clips.iter().enumerate() {
                prop_assert!(c.start_ms < c.end_ms);
                prop_assert!(c.end_ms <= options.asset_duration_ms.unwrap_or(u64::MAX));
                // At least one matched second, and the evidence names matched seconds inside the clip.
                let overlapping = |s: &&ScoredSecond| s.second * bucket < c.end_ms && (s.second + 1) * bucket > c.start_ms;
                let inside: Vec<u64> = seconds.iter().filter(overlapping).map(|s| s.second).collect();
                prop_assert!(!inside.is_empty());
                prop_assert!(inside.contains(&c.first_second) && inside.contains(&c.last_second));
                prop_assert!(c.first_second <= c.last_second);
                if let Some(max) = options.max_length_ms {
                    prop_assert!(c.end_ms - c.start_ms <= max);
                }
                for other in &clips[i + 1..] {
                    prop_assert!(c.end_ms <= other.start_ms || other.end_ms <= c.start_ms, "{:?} overlaps {:?}", c, other);
                    prop_assert!(rank(c, other) == Ordering::Less);
                }
            }
        }

        #[test]
        fn min_length_is_reached_where_the_asset_allows(
            seconds in arbitrary_seconds(120),
            min in 0u64..20_000,
            duration in 130_000u64..200_000,
        ) {
            let options = CurationOptions { min_length_ms: Some(min), asset_duration_ms: Some(duration), ..options() };
            for c in curate(&seconds, &[], &options, usize::MAX) {
                // Suppression may drop clips, never shorten them.
                prop_assert!(c.end_ms - c.start_ms >= min);
            }
        }

        #[test]
        fn built_clips_partition_the_seconds(seconds in arbitrary_seconds(200), gap_ms in 0u64..5000) {
            let options = CurationOptions { gap_ms, ..options() };
            let clips = build_clips(&seconds, &options);
            let mut covered = Vec::new();
            for (i, c) in clips.iter().enumerate() {
                prop_assert_eq!((c.start_ms, c.end_ms), (c.first_second * 1000, (c.last_second + 1) * 1000));
                if let Some(next) = clips.get(i + 1) {
                    prop_assert!((next.first_second - c.last_second - 1) * 1000 > gap_ms);
                }
                covered.extend(seconds.iter().filter(|s| (c.first_second..=c.last_second).contains(&s.second)).map(|s| s.second));
            }
            prop_assert_eq!(covered, seconds.iter().map(|s| s.second).collect::<Vec<_>>());
        }

        #[test]
        fn best_clip_score_is_the_best_built_clip(
            seconds in arbitrary_seconds(200),
            // Some seconds that match nothing (0, negative, NaN), as fused lists may hold.
            misses in prop::collection::vec((0usize..60, prop::sample::select(vec![0.0f32, -1.0, f32::NAN])), 0..6),
            gap_ms in 0u64..5000,
            bucket_ms in prop::sample::select(vec![0u64, 250, 1000, 2000]),
        ) {
            let mut seconds = seconds;
            for (at, score) in misses {
                if let Some(s) = seconds.get_mut(at) {
                    s.score = score;
                }
            }
            let options = CurationOptions { gap_ms, bucket_ms, ..options() };
            let built = build_clips(&seconds, &options).iter().map(|c| c.score).fold(None, |best: Option<f64>, score| {
                Some(best.map_or(score, |b| b.max(score)))
            });
            let streamed = best_clip_score(seconds.iter().copied(), &options);
            prop_assert_eq!(streamed.map(|best| best.map(f64::to_bits)), Ok(built.map(f64::to_bits)));
            // A list that does not ascend strictly is left to `build_clips`, which repairs it.
            if seconds.len() >= 2 {
                let mut swapped = seconds.clone();
                swapped.swap(0, 1);
                prop_assert_eq!(best_clip_score(swapped, &options), Err(NotAscending));
                let mut repeated = seconds.clone();
                repeated[1].second = repeated[0].second;
                prop_assert_eq!(best_clip_score(repeated, &options), Err(NotAscending));
            }
        }

        #[test]
        fn suppression_matches_the_quadratic_definition(clips in arbitrary_clips()) {
            prop_assert_eq!(suppress_overlaps(clips.clone()), naive_suppress(&clips));
        }

        #[test]
        fn snapping_matches_a_scan_of_every_shot(
            start in 0u64..120_000,
            length in 0u64..20_000,
            shots in arbitrary_shots(),
            cap in prop::sample::select(vec![0u64, 3000, 10_000]),
        ) {
            let mut fast = clip(start, start + length, 1.0);
            let mut slow = fast.clone();
            snap_to_shots_within(&mut fast, &shots, cap);
            naive_snap(&mut slow, &shots, cap);
            prop_assert_eq!(fast, slow);
        }

        #[test]
        fn sequence_matches_the_definition(
            a in arbitrary_seconds(150), b in arbitrary_seconds(150), within_ms in 0u64..20_000, gap_ms in 0u64..3000,
        ) {
            let options = CurationOptions { gap_ms, ..options() };
            prop_assert_eq!(sequence_seconds(&a, &b, within_ms, &options), naive_sequence(&a, &b, within_ms, &options));
        }

        #[test]
        fn intersect_and_union_match_maps(lists in prop::collection::vec(arbitrary_seconds(80), 0..4)) {
            let slices: Vec<&[ScoredSecond]> = lists.iter().map(Vec::as_slice).collect();
            let mut union: BTreeMap<u64, (usize, f64)> = BTreeMap::new();
            for list in &lists {
                for s in list {
                    let entry = union.entry(s.second).or_insert((0, 0.0));
                    *entry = (entry.0 + 1, entry.1 + f64::from(s.score));
                }
            }
            let expected_union: Vec<(u64, f32)> = union.iter().map(|(&second, &(_, sum))| (second, sum as f32)).collect();
            let expected_intersection: Vec<(u64, f32)> =
                union.iter().filter(|(_, &(count, _))| count == lists.len()).map(|(&second, &(_, sum))| (second, sum as f32)).collect();
            prop_assert_eq!(flat(&union_seconds(&slices)), expected_union);
            prop_assert_eq!(flat(&intersect_seconds(&slices)), expected_intersection);
        }
    }
}

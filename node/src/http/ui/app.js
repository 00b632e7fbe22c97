'use strict';
/* ==========================================================================================
 * Rushes search page.
 *
 * Part 1 (this top part) is pure logic with no DOM and no network: timecode math, the EDL and
 * CSV writers, URL state encoding, highlight ranges and the query-understanding helpers. It is
 * exported for tests (module.exports under node, window.Rushes in the browser).
 * Part 2 (below the marker "UI") is the page: it talks to the API and draws the results.
 * ========================================================================================== */

/* ---------- Timecode ---------------------------------------------------------------------- */

/** The frame rate of an asset as two numbers: `rate`, real frames per second (NTSC rates such as
 *  23.976 are taken as 24000/1001 exactly), and `nominal`, the integer timecode base (24, 30, 60)
 *  used to count frames in HH:MM:SS:FF, non-drop-frame. `null` when fps is missing or invalid. */
function fpsInfo(fps) {
  const f = Number(fps);
  if (!Number.isFinite(f) || f <= 0) return null;
  const nominal = Math.max(1, Math.round(f));
  const ntsc = nominal * 1000 / 1001;
  const isNtsc = Math.abs(f - nominal) > 1e-6 && Math.abs(f - ntsc) < 0.005;
  return { rate: isNtsc ? ntsc : f, nominal, ntsc: isNtsc };
}

/** Frames since 0 for a time in milliseconds: the nearest frame boundary at the asset's real rate. */
function msToFrames(ms, fps) {
  const info = fpsInfo(fps);
  if (!info) throw new RangeError('fps must be a positive number, not ' + fps);
  return Math.max(0, Math.round(Number(ms) * info.rate / 1000 + 1e-9));
}

/** `HH:MM:SS:FF`, non-drop-frame, counting `frames` at `nominalFps` frames per timecode second.
 *  Hours are not wrapped at 24. */
function framesToTimecode(frames, nominalFps) {
  const base = Math.round(Number(nominalFps));
  if (!Number.isFinite(base) || base <= 0) throw new RangeError('nominal fps must be a positive number');
  let n = Math.max(0, Math.round(Number(frames) || 0));
  const ff = n % base; n = (n - ff) / base;
  const ss = n % 60; n = (n - ss) / 60;
  const mm = n % 60; const hh = (n - mm) / 60;
  const two = (v) => String(v).padStart(2, '0');
  return `${two(hh)}:${two(mm)}:${two(ss)}:${two(ff)}`;
}

/** Frames for a `HH:MM:SS:FF` (or `HH:MM:SS;FF`) timecode at `nominalFps`, non-drop-frame. */
function timecodeToFrames(tc, nominalFps) {
  const m = /^(\d{1,3}):(\d{2}):(\d{2})[:;.](\d{2,3})$/.exec(String(tc).trim());
  if (!m) throw new RangeError('not a timecode: ' + tc);
  const base = Math.round(Number(nominalFps));
  return ((Number(m[1]) * 60 + Number(m[2])) * 60 + Number(m[3])) * base + Number(m[4]);
}

/** A time in milliseconds as SMPTE timecode at the asset's fps (nominal rate, non-drop-frame). */
function msToTimecode(ms, fps) {
  const info = fpsInfo(fps);
  if (!info) throw new RangeError('fps must be a positive number, not ' + fps);
  return framesToTimecode(msToFrames(ms, fps), info.nominal);
}

/** A time without frames, for when an asset has no fps: `H:MM:SS.mmm`. */
function msToClock(ms) {
  const t = Math.max(0, Math.round(Number(ms) || 0));
  const h = Math.floor(t / 3600000), m = Math.floor(t / 60000) % 60, s = Math.floor(t / 1000) % 60, r = t % 1000;
  return `${h}:${String(m).padStart(2, '0')}:${String(s).padStart(2, '0')}.${String(r).padStart(3, '0')}`;
}

/** A short duration for people: `4 s`, `1 min 05 s`, `1 h 02 min`. */
function formatDuration(ms) {
  const s = Math.max(0, Math.round(Number(ms) / 1000));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${String(s % 60).padStart(2, '0')} s`;
  return `${Math.floor(s / 3600)} h ${String(Math.floor(s / 60) % 60).padStart(2, '0')} min`;
}

/** Parses what an editor types as a time: `90`, `90s`, `1:30`, `00:01:30`, `1m30s`, `2 min`,
 *  `1h`. Returns milliseconds, or null for empty text; throws on nonsense. */
function parseTimeInput(text) {
  const t = String(text == null ? '' : text).trim().toLowerCase();
  if (t === '') return null;
  let m = /^(\d+(?:\.\d+)?)\s*(ms|s|sec|secs|seconds?|m|min|mins|minutes?|h|hr|hrs|hours?)?$/.exec(t);
  if (m) {
    const v = Number(m[1]); const u = m[2] || 's';
    const k = u === 'ms' ? 1 : u[0] === 's' ? 1000 : u[0] === 'm' ? 60000 : 3600000;
    return Math.round(v * k);
  }
  m = /^(?:(\d+):)?(\d{1,2}):(\d{1,2}(?:\.\d+)?)$/.exec(t);
  if (m) return Math.round(((Number(m[1] || 0) * 60 + Number(m[2])) * 60 + Number(m[3])) * 1000);
  m = /^(?:(\d+)\s*h)?\s*(?:(\d+)\s*m(?:in)?)?\s*(?:(\d+(?:\.\d+)?)\s*s)?$/.exec(t);
  if (m && (m[1] || m[2] || m[3])) return Math.round(((Number(m[1] || 0) * 60 + Number(m[2] || 0)) * 60 + Number(m[3] || 0)) * 1000);
  throw new RangeError(`"${text}" is not a time (try 90, 1:30, 00:01:30 or 2 min)`);
}

/** Milliseconds as the shortest clock text parseTimeInput reads back: `1:30`, `1:02:03`, `0:05.5`. */
function formatTimeInput(ms) {
  if (ms == null || ms === '') return '';
  const t = Math.max(0, Number(ms));
  const h = Math.floor(t / 3600000), m = Math.floor(t / 60000) % 60;
  const s = (t % 60000) / 1000;
  const ss = (Number.isInteger(s) ? String(s) : s.toFixed(3).replace(/0+$/, '')).padStart(2, '0');
  const sPadded = s < 10 && !ss.startsWith('0') ? '0' + ss : ss;
  return h > 0 ? `${h}:${String(m).padStart(2, '0')}:${sPadded}` : `${m}:${sPadded}`;
}

/* ---------- EDL (CMX3600) and CSV markers ------------------------------------------------- */

/** CMX3600 reel name for an asset id: upper-case letters and digits only, at most 8 characters.
 *  Ids longer than 8 keep their last 8 characters (where episode numbers usually are). */
function reelName(assetId) {
  const clean = String(assetId || '').toUpperCase().replace(/[^A-Z0-9]/g, '');
  if (clean === '') return 'AX';
  return clean.length <= 8 ? clean : clean.slice(-8);
}

/** Reel names for a list of asset ids, distinct per distinct id: a collision (two ids that
 *  sanitize to the same 8 characters) gets a numbered suffix replacing its last characters. */
function reelNames(assetIds) {
  const out = new Map();
  const used = new Set();
  for (const id of assetIds) {
    if (out.has(id)) continue;
    let reel = reelName(id);
    for (let n = 2; used.has(reel); n++) {
      const suffix = String(n);
      reel = (reelName(id).slice(0, 8 - suffix.length) + suffix);
    }
    used.add(reel);
    out.set(id, reel);
  }
  return out;
}

/** One line of EDL text: no line breaks, no control characters. */
function edlText(s) {
  return String(s == null ? '' : s).replace(/[\u0000-\u001f\u007f]+/g, ' ').replace(/\s+/g, ' ').trim();
}

/** The most common fps among clips (first seen wins a tie): the EDL's record rate. */
function recordFps(clips) {
  const counts = new Map();
  for (const c of clips) counts.set(Number(c.fps), (counts.get(Number(c.fps)) || 0) + 1);
  let best = null, bestCount = 0;
  for (const [fps, count] of counts) if (count > bestCount) { best = fps; bestCount = count; }
  return best;
}

/** Source and record frame numbers of clips laid end to end from `recordStartTc`. */
function layoutClips(clips, recordRate, recordStartTc) {
  const rec = fpsInfo(recordRate);
  let recPos = timecodeToFrames(recordStartTc, rec.nominal);
  return clips.map((c) => {
    const src = fpsInfo(c.fps);
    const srcIn = msToFrames(c.start_ms, c.fps);
    const srcOut = Math.max(srcIn + 1, msToFrames(c.end_ms, c.fps));
    const sameRate = Math.abs(src.rate - rec.rate) < 1e-9;
    const recLen = sameRate ? srcOut - srcIn : Math.max(1, Math.round((c.end_ms - c.start_ms) * rec.rate / 1000));
    const out = { clip: c, src, srcIn, srcOut, recIn: recPos, recOut: recPos + recLen, sameRate };
    recPos += recLen;
    return out;
  });
}

/**
 * A CMX3600 EDL of clips, cuts only, laid end to end on the record side from 01:00:00:00.
 * clips: [{asset_id, start_ms, end_ms, fps, clip_name?, comment?}], in edit order.
 * options: {title, recordStart = '01:00:00:00', eol = '\r\n'}.
 * Source timecodes count frames at each clip's asset fps (NTSC rates at their nominal integer
 * base, non-drop-frame); record timecodes use the most common fps among the clips.
 */
function toEdl(clips, options = {}) {
  const eol = options.eol || '\r\n';
  const list = (clips || []).filter((c) => fpsInfo(c.fps));
  if (list.length === 0) throw new RangeError('no clips with a known fps to export');
  if (list.length > 999) throw new RangeError('a CMX3600 EDL holds at most 999 events; select fewer clips');
  const recFps = recordFps(list);
  const rec = fpsInfo(recFps);
  const reels = reelNames(list.map((c) => c.asset_id));
  const title = edlText(options.title || 'Rushes selection').replace(/[^\x20-\x7e]/g, '?').slice(0, 70) || 'Rushes selection';
  const lines = [`TITLE: ${title}`, 'FCM: NON-DROP FRAME'];
  layoutClips(list, recFps, options.recordStart || '01:00:00:00').forEach((e, i) => {
    const c = e.clip;
    const num = String(i + 1).padStart(3, '0');
    const reel = reels.get(c.asset_id);
    lines.push('');
    lines.push(`${num}  ${reel.padEnd(8)} ${'V'.padEnd(5)} ${'C'.padEnd(8)} ` +
      `${framesToTimecode(e.srcIn, e.src.nominal)} ${framesToTimecode(e.srcOut, e.src.nominal)} ` +
      `${framesToTimecode(e.recIn, rec.nominal)} ${framesToTimecode(e.recOut, rec.nominal)}`);
    lines.push(`* FROM CLIP NAME: ${edlText(c.clip_name || c.asset_id)}`);
    lines.push(`* ASSET ID: ${edlText(c.asset_id)}`);
    if (!e.sameRate) lines.push(`* SOURCE FPS ${c.fps} (TIMECODE BASE ${e.src.nominal} NDF), RECORD FPS ${recFps}`);
    if (c.comment) lines.push(`* COMMENT: ${edlText(c.comment)}`);
  });
  return lines.join(eol) + eol;
}

/** One CSV field (RFC 4180): quoted when it holds a comma, quote or line break; a leading
 *  =, +, -, @ gets a quote mark so spreadsheets do not run it as a formula. */
function csvField(v) {
  let s = v == null ? '' : String(v);
  if (/^[=+\-@\t\r]/.test(s) && !/^-?\d+(\.\d+)?$/.test(s)) s = "'" + s;
  return /[",\r\n]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s;
}

const CSV_COLUMNS = ['Marker Name', 'Description', 'In', 'Out', 'Duration', 'Marker Type',
  'Asset ID', 'FPS', 'Start ms', 'End ms', 'Score'];

/** CSV markers, one row per clip, timecodes at the clip's asset fps (non-drop-frame).
 *  clips: [{asset_id, start_ms, end_ms, fps, name?, comment?, score?}]. */
function toCsv(clips, options = {}) {
  const eol = options.eol || '\r\n';
  const rows = [CSV_COLUMNS];
  for (const c of clips || []) {
    const info = fpsInfo(c.fps);
    if (!info) continue;
    const inF = msToFrames(c.start_ms, c.fps);
    const outF = Math.max(inF + 1, msToFrames(c.end_ms, c.fps));
    rows.push([c.name || c.asset_id, c.comment || '', framesToTimecode(inF, info.nominal), framesToTimecode(outF, info.nominal),
      framesToTimecode(outF - inF, info.nominal), 'Comment', c.asset_id, String(c.fps), String(c.start_ms), String(c.end_ms),
      c.score == null ? '' : Number(c.score).toFixed(4)]);
  }
  return rows.map((r) => r.map(csvField).join(',')).join(eol) + eol;
}

/* ---------- URL state --------------------------------------------------------------------- */

const DEFAULT_STATE = Object.freeze({ q: '', mode: 'intersection', per: 5, limit: 20, series: [], season: null,
  episode: null, from_ms: null, to_ms: null, cursor: null, page: 1 });

function positiveInt(v) {
  const n = Number(v);
  return v !== null && v !== '' && Number.isInteger(n) && n >= 0 ? n : null;
}

/** The page state as a query string (`?q=...&mode=union&...`), defaults left out. */
function encodeState(state) {
  const s = Object.assign({}, DEFAULT_STATE, state || {});
  const p = new URLSearchParams();
  if (s.q) p.set('q', s.q);
  if (s.mode && s.mode !== DEFAULT_STATE.mode) p.set('mode', s.mode);
  if (s.per && s.per !== DEFAULT_STATE.per) p.set('per', String(s.per));
  if (s.limit && s.limit !== DEFAULT_STATE.limit) p.set('limit', String(s.limit));
  if (s.series && s.series.length) p.set('series', s.series.join(','));
  for (const k of ['season', 'episode', 'from_ms', 'to_ms']) if (s[k] != null) p.set(k, String(s[k]));
  if (s.cursor) { p.set('cursor', s.cursor); p.set('page', String(s.page || 2)); }
  const text = p.toString();
  return text ? '?' + text : '';
}

/** The page state from a query string (or a URLSearchParams); unknown or bad values fall back. */
function decodeState(search) {
  const p = search instanceof URLSearchParams ? search : new URLSearchParams(String(search || '').replace(/^[?#]/, ''));
  const s = Object.assign({}, DEFAULT_STATE, { series: [] });
  s.q = (p.get('q') || '').slice(0, 4096);
  s.mode = p.get('mode') === 'union' ? 'union' : 'intersection';
  const per = positiveInt(p.get('per'));
  if (per && per >= 1) s.per = per;
  const limit = positiveInt(p.get('limit'));
  if (limit && limit >= 1 && limit <= 1000) s.limit = limit;
  s.series = (p.get('series') || '').split(',').map((x) => x.trim()).filter(Boolean);
  for (const k of ['season', 'episode', 'from_ms', 'to_ms']) s[k] = positiveInt(p.get(k));
  s.cursor = p.get('cursor') || null;
  s.page = s.cursor ? Math.max(2, positiveInt(p.get('page')) || 2) : 1;
  return s;
}

/** The POST /v1/search body for a state. */
function searchRequest(state) {
  const body = { mode: state.mode, per_asset: state.per, limit: state.limit };
  if (state.q && state.q.trim()) body.q = state.q.trim();
  const f = {};
  if (state.series && state.series.length) f.series = state.series.slice();
  for (const k of ['season', 'episode', 'from_ms', 'to_ms']) if (state[k] != null) f[k] = state[k];
  if (Object.keys(f).length) body.filters = f;
  if (state.cursor) body.cursor = state.cursor;
  return body;
}

/* ---------- Highlights -------------------------------------------------------------------- */

/** Splits text into [{text, hit}] pieces from byte ranges `[[start, end), ...]` of its UTF-8
 *  encoding (the API's `highlights`). Ranges out of bounds or inside a character are clamped. */
function highlightByteRanges(text, ranges) {
  const s = String(text || '');
  if (!ranges || !ranges.length) return [{ text: s, hit: false }];
  // UTF-8 byte offset of each UTF-16 index.
  const byteAt = [];
  let b = 0;
  for (let i = 0; i < s.length; i++) {
    byteAt[i] = b;
    const cp = s.codePointAt(i);
    const len = cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4;
    if (cp >= 0x10000) { byteAt[i + 1] = b; i++; }
    b += len;
  }
  byteAt[s.length] = b;
  const toIndex = (byte) => {
    let i = 0;
    while (i < s.length && byteAt[i] < byte) i++;
    return i;
  };
  const marks = ranges.map(([a, z]) => [toIndex(Math.max(0, a)), toIndex(Math.min(b, z))]).filter(([a, z]) => z > a)
    .sort((x, y) => x[0] - y[0]);
  return piecesFromIndexRanges(s, marks);
}

function piecesFromIndexRanges(s, marks) {
  const out = [];
  let at = 0;
  for (const [a0, z] of marks) {
    const a = Math.max(a0, at);
    if (z <= a) continue;
    if (a > at) out.push({ text: s.slice(at, a), hit: false });
    out.push({ text: s.slice(a, z), hit: true });
    at = z;
  }
  if (at < s.length || out.length === 0) out.push({ text: s.slice(at), hit: false });
  return out;
}

/** Fallback when the API gave no highlights: whole-word, case-insensitive matches of words. */
function highlightWords(text, words) {
  const s = String(text || '');
  const ws = [...new Set((words || []).map((w) => String(w).toLowerCase()).filter((w) => w.length >= 2))];
  if (!ws.length) return [{ text: s, hit: false }];
  const esc = ws.map((w) => w.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')).sort((a, b) => b.length - a.length);
  const re = new RegExp(`(^|[^\\p{L}\\p{N}])(${esc.join('|')})(?=$|[^\\p{L}\\p{N}])`, 'giu');
  const marks = [];
  let m;
  while ((m = re.exec(s)) !== null) {
    const start = m.index + m[1].length;
    marks.push([start, start + m[2].length]);
    if (m[0].length === 0) re.lastIndex++;
  }
  return piecesFromIndexRanges(s, marks);
}

/* ---------- Query understanding ----------------------------------------------------------- */

/** `label` / `Label`, `co_occurrence` / `CoOccurrence` → `label`, `co_occurrence`. */
function normalizeKind(kind) {
  if (kind == null) return '';
  return String(kind).replace(/([a-z0-9])([A-Z])/g, '$1_$2').replace(/[\s-]+/g, '_').toLowerCase();
}

/** Node type of the understanding tree (`type` field), both spellings. */
function nodeType(node) {
  return node ? normalizeKind(node.type || node.kind || Object.keys(node)[0]) : '';
}

/** `[typed, label]` pairs or `{typed, label}` objects → [{typed, label}]. */
function corrections(understanding) {
  const list = (understanding && understanding.corrections) || [];
  return list.map((c) => Array.isArray(c) ? { typed: c[0], label: c[1] } : { typed: c.typed || c.from, label: c.label || c.to })
    .filter((c) => c.typed && c.label);
}

/** `label` written in the case of `typed`: `Jooey` → `Joey`, `JOOEY` → `JOEY`, `jooey` → `joey`. */
function matchCase(typed, label) {
  const t = String(typed), l = String(label);
  if (t.length > 1 && t === t.toUpperCase() && t !== t.toLowerCase()) return l.toUpperCase();
  if (t[0] && t[0] === t[0].toUpperCase() && t[0] !== t[0].toLowerCase()) return l.replace(/(^|\s)(\p{L})/gu, (m, sp, c) => sp + c.toUpperCase());
  return l;
}

/** The query text with each corrected word replaced by its correction (whole words, any case). */
function applyCorrections(q, list) {
  let out = String(q || '');
  for (const { typed, label } of list) {
    const esc = String(typed).replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
    out = out.replace(new RegExp(`(^|[^\\p{L}\\p{N}])(${esc})(?=$|[^\\p{L}\\p{N}])`, 'giu'), (m, pre, word) => pre + matchCase(word, label));
  }
  return out;
}

function formatSeconds(ms) {
  const s = ms / 1000;
  if (s >= 60 && s % 60 === 0) return `${s / 60} minute${s === 60 ? '' : 's'}`;
  return `${Number.isInteger(s) ? s : Number(s.toFixed(3))} second${s === 1 ? '' : 's'}`;
}

/** The understanding tree written back as query text the server understands the same way. */
function renderNode(node) {
  if (!node) return '';
  switch (nodeType(node)) {
    case 'label': return node.label;
    case 'phrase': return `"${String(node.text).replace(/["“”]/g, '')}"`;
    case 'words': return node.text;
    case 'sequence': {
      const first = renderNode(node.first), then = renderNode(node.then);
      const within = node.within_ms != null ? ` within ${formatSeconds(node.within_ms)}` : '';
      return `${first} then ${then}${within}`;
    }
    case 'while': {
      const a = nodeType(node.a) === 'sequence' ? `(${renderNode(node.a)})` : renderNode(node.a);
      return `${a} while ${renderNode(node.b)}`;
    }
    case 'all': return (node.nodes || []).map((n) => nodeType(n) === 'sequence' && node.nodes.length > 1 ? renderNode(n) : renderNode(n)).join(' ');
    default: return '';
  }
}

/** The understanding's filters as query text (`series`, `season 1`, `episode 2`, time window). */
function renderFilters(filters) {
  const parts = [];
  if (!filters) return parts;
  if (filters.series) parts.push(filters.series);
  if (filters.season != null && filters.episode != null) parts.push(`s${String(filters.season).padStart(2, '0')}e${String(filters.episode).padStart(2, '0')}`);
  else if (filters.season != null) parts.push(`season ${filters.season}`);
  else if (filters.episode != null) parts.push(`episode ${filters.episode}`);
  if (filters.from_ms != null && filters.to_ms != null) parts.push(`between ${filters.from_ms / 1000} and ${filters.to_ms / 1000} seconds`);
  else if (filters.from_ms != null) parts.push(`after ${filters.from_ms / 1000} seconds`);
  else if (filters.to_ms != null) parts.push(`in the first ${filters.to_ms / 1000} seconds`);
  return parts;
}

/**
 * The chips of an understanding: one per leaf (label, phrase, words), per connective (then,
 * while) and per filter. Each chip has `id` (its path in the tree, or `filter:<key>`), `kind`,
 * `text` and `title`.
 */
function understandingChips(understanding) {
  const chips = [];
  if (!understanding) return chips;
  const walk = (node, path) => {
    if (!node) return;
    const t = nodeType(node);
    if (t === 'label') {
      const tracks = (node.tracks || []).join(', ');
      chips.push({ id: path, kind: 'label', removable: true, track: (node.tracks || [])[0] || 'label', text: node.label,
        title: `label "${node.label}"${tracks ? ' on ' + tracks : ''}${node.edits ? ` (you typed "${node.typed}")` : ''}` });
    } else if (t === 'phrase') {
      chips.push({ id: path, kind: 'phrase', removable: true, text: `“${node.text}”`, title: `dialogue phrase "${node.text}"` });
    } else if (t === 'words') {
      chips.push({ id: path, kind: 'words', removable: true, text: node.text, title: `dialogue words and meaning: "${node.text}"` });
    } else if (t === 'sequence') {
      walk(node.first, path + '.first');
      const removable = canDissolve(node);
      chips.push({ id: path, kind: 'then', text: `then ≤ ${formatSeconds(node.within_ms == null ? 30000 : node.within_ms)}`, removable,
        title: 'sequence: what comes before, then what comes after, within this time' +
          (removable ? ' (remove: both at once, in any order)' : ' (part of a chain: remove a name or phrase instead)') });
      walk(node.then, path + '.then');
    } else if (t === 'while') {
      walk(node.a, path + '.a');
      const removable = canDissolve(node);
      chips.push({ id: path, kind: 'while', text: 'while', removable,
        title: 'co-occurrence: both at the same time' + (removable ? ' (remove: all the parts together)' : ' (part of a chain: remove a name or phrase instead)') });
      walk(node.b, path + '.b');
    } else if (t === 'all') {
      (node.nodes || []).forEach((n, i) => walk(n, `${path}.nodes.${i}`));
    }
  };
  walk(understanding.root, 'root');
  const f = understanding.filters || {};
  if (f.series) chips.push({ id: 'filter:series', kind: 'filter', removable: true, text: `series ${f.series}`, title: 'series filter from the query' });
  if (f.season != null) chips.push({ id: 'filter:season', kind: 'filter', removable: true, text: `season ${f.season}`, title: 'season filter from the query' });
  if (f.episode != null) chips.push({ id: 'filter:episode', kind: 'filter', removable: true, text: `episode ${f.episode}`, title: 'episode filter from the query' });
  if (f.from_ms != null) chips.push({ id: 'filter:from_ms', kind: 'filter', removable: true, text: `from ${formatTimeInput(f.from_ms)}`, title: 'time window start from the query' });
  if (f.to_ms != null) chips.push({ id: 'filter:to_ms', kind: 'filter', removable: true, text: `to ${formatTimeInput(f.to_ms)}`, title: 'time window end from the query' });
  return chips;
}

/** Whether a connective (sequence, while) can become a plain conjunction that query text still
 *  expresses: not when one of its sides is itself a connective ("A then B then C"). */
function canDissolve(node) {
  const t = nodeType(node);
  const sides = t === 'sequence' ? [node.first, node.then] : t === 'while' ? [node.a, node.b] : [];
  return sides.length === 2 && sides.every((n) => !['sequence', 'while'].includes(nodeType(n)));
}

/** The tree without the node at `path` (`root.nodes.1.first`); a connective path (sequence,
 *  while) keeps both sides as plain conjunction. Returns null when nothing is left. */
function removeNode(root, path) {
  const parts = String(path).split('.').slice(1);
  const rec = (node, rest) => {
    if (!node) return null;
    if (rest.length === 0) return null;
    const t = nodeType(node);
    const [key, ...more] = rest;
    if (key === 'nodes') {
      const i = Number(more[0]);
      const nodes = (node.nodes || []).map((n, j) => (j === i ? rec(n, more.slice(1)) : n)).filter(Boolean);
      if (nodes.length === 0) return null;
      return nodes.length === 1 ? nodes[0] : Object.assign({}, node, { nodes });
    }
    if (t === 'sequence' || t === 'while') {
      const child = rec(node[key], more);
      const next = Object.assign({}, node, { [key]: child });
      const other = t === 'sequence' ? (key === 'first' ? 'then' : 'first') : (key === 'a' ? 'b' : 'a');
      return child ? next : node[other];
    }
    return node;
  };
  return rec(root, parts);
}

/** A connective (sequence/while) at `path` turned into a conjunction of its two sides. */
function dissolveConnective(root, path) {
  const parts = String(path).split('.').slice(1);
  const rec = (node, rest) => {
    if (!node) return node;
    const t = nodeType(node);
    if (rest.length === 0) {
      if (t === 'sequence') return { type: 'all', nodes: [node.first, node.then] };
      if (t === 'while') return { type: 'all', nodes: [node.a, node.b] };
      return node;
    }
    const [key, ...more] = rest;
    if (key === 'nodes') {
      const i = Number(more[0]);
      return Object.assign({}, node, { nodes: node.nodes.map((n, j) => (j === i ? rec(n, more.slice(1)) : n)) });
    }
    return Object.assign({}, node, { [key]: rec(node[key], more) });
  };
  return rec(root, parts);
}

/**
 * The state after removing a chip: the query text is rewritten from what remains of the
 * understanding; filters understood from the text that stay are moved into the explicit
 * filters (so they survive the rewrite and show in the filter bar). Explicit filters win.
 */
function stateWithoutChip(state, understanding, chipId) {
  const next = Object.assign({}, state, { cursor: null, page: 1 });
  const f = Object.assign({}, (understanding && understanding.filters) || {});
  let root = understanding ? understanding.root : null;
  if (chipId.startsWith('filter:')) {
    const key = chipId.slice(7);
    delete f[key];
    if (key === 'series') next.series = [];
    else next[key] = null;
  } else {
    const node = chipNodeAt(root, chipId);
    const t = nodeType(node);
    root = t === 'sequence' || t === 'while' ? dissolveConnective(root, chipId) : removeNode(root, chipId);
  }
  // Text filters that stay move to the explicit filters, where the request's own win as the
  // server applies them: series and the time window as a whole, season and episode each.
  if (f.series && !(next.series && next.series.length)) next.series = [f.series];
  for (const k of ['season', 'episode']) if (f[k] != null && next[k] == null) next[k] = f[k];
  if (next.from_ms == null && next.to_ms == null && (state.from_ms == null && state.to_ms == null)) {
    if (f.from_ms != null) next.from_ms = f.from_ms;
    if (f.to_ms != null) next.to_ms = f.to_ms;
  }
  next.q = renderNode(root);
  return next;
}

function chipNodeAt(root, path) {
  let node = root;
  for (const key of String(path).split('.').slice(1)) node = node ? node[key] : null;
  return node;
}

/** Query words worth highlighting when the API gave no highlight ranges. */
function queryWords(q) {
  return String(q || '').toLowerCase().split(/[^\p{L}\p{N}']+/u).filter((w) => w.length >= 3);
}

const RushesPure = { fpsInfo, msToFrames, framesToTimecode, timecodeToFrames, msToTimecode, msToClock, formatDuration,
  parseTimeInput, formatTimeInput, reelName, reelNames, recordFps, layoutClips, toEdl, csvField, toCsv, CSV_COLUMNS,
  DEFAULT_STATE, encodeState, decodeState, searchRequest, highlightByteRanges, highlightWords, normalizeKind, nodeType,
  corrections, applyCorrections, renderNode, renderFilters, understandingChips, canDissolve, removeNode, dissolveConnective,
  stateWithoutChip, queryWords };

if (typeof module !== 'undefined' && module.exports) module.exports = RushesPure;

/* ==========================================================================================
 * UI: everything below talks to the DOM and the API. Nothing runs outside a browser.
 * ========================================================================================== */

(function startPage() {
  if (typeof window === 'undefined' || typeof document === 'undefined') return;

  const KEY_STORAGE = 'rushes.apiKey';
  const SELECTION_STORAGE = 'rushes.selection';
  const SUGGEST_DEBOUNCE_MS = 150;
  const TRACKS_PADDING_MS = 10000;
  const TRACK_NAMES = { character: 'Characters', scene: 'Scene', object: 'Objects', dialogue: 'Dialogue', shot: 'Shots' };
  const TRACK_ORDER = ['character', 'scene', 'object', 'dialogue', 'shot'];

  const $ = (sel, root) => (root || document).querySelector(sel);
  const $$ = (sel, root) => Array.from((root || document).querySelectorAll(sel));

  /** Creates an element: h('div', {class: 'x', onclick: fn, 'aria-label': '...'}, child, 'text'). Text is
   *  always set as text, never parsed as HTML. */
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v == null || v === false) continue;
      if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
      else if (k === 'class') el.className = v;
      else if (k === 'dataset') Object.assign(el.dataset, v);
      else if (k === 'style' && typeof v === 'object') Object.assign(el.style, v);
      else if (k in el && typeof v !== 'string') el[k] = v;
      else el.setAttribute(k, v === true ? '' : String(v));
    }
    append(el, children);
    return el;
  }
  function append(el, children) {
    for (const c of children.flat(Infinity)) {
      if (c == null || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }

  /* ---------- App state ------------------------------------------------------------------- */

  const app = {
    state: decodeState(location.search),
    cursors: [],
    response: null,
    assets: new Map(),
    selection: new Map(),
    seriesSeen: new Set(),
    searchSeq: 0,
    /** Searches finished (shown, failed, or the intro for an empty query): tests wait on it. */
    searchesDone: 0,
    searchAbort: null,
    apiKey: null,
    keyWaiters: null,
    lastAction: null,
  };
  try { app.apiKey = sessionStorage.getItem(KEY_STORAGE) || null; } catch (e) { app.apiKey = null; }

  /* ---------- API ------------------------------------------------------------------------- */

  class ApiError extends Error {
    constructor(status, code, message, extra) {
      super(message);
      this.status = status; this.code = code; Object.assign(this, extra || {});
    }
  }

  /** fetch + JSON, with the API key; a 401 asks for a key (one form for every call waiting) and
   *  retries with it. Throws ApiError with the API's message. */
  async function api(path, opts = {}) {
    for (let attempt = 0; ; attempt++) {
      const keyUsed = app.apiKey;
      const headers = { Accept: 'application/json' };
      if (opts.body !== undefined) headers['Content-Type'] = 'application/json';
      if (keyUsed) headers.Authorization = 'Bearer ' + keyUsed;
      let res;
      try {
        res = await fetch(path, { method: opts.method || 'GET', headers, signal: opts.signal, cache: 'no-store',
          body: opts.body !== undefined ? JSON.stringify(opts.body) : undefined });
      } catch (e) {
        if (e.name === 'AbortError') throw e;
        throw new ApiError(0, 'network', 'Could not reach the Rushes node (' + e.message + '). Check that it is running, then retry.');
      }
      const text = await res.text();
      let data = null;
      try { data = text ? JSON.parse(text) : null; } catch (e) { data = null; }
      if (res.ok) return data;
      const err = (data && data.error) || {};
      const retryAfter = Number(res.headers.get('Retry-After')) || err.retry_after_s || null;
      const error = new ApiError(res.status, err.code || 'http_' + res.status,
        err.message || `The node answered ${res.status} ${res.statusText}`.trim(), { field: err.field, retryAfter });
      if (res.status === 401 && attempt < 5) {
        await waitForKey(error, keyUsed, opts.signal);
        continue;
      }
      throw error;
    }
  }

  /** Resolves once a key other than `keyUsed` is set (asks for it with the key form). */
  function waitForKey(error, keyUsed, signal) {
    if (app.apiKey !== keyUsed) return Promise.resolve();
    if (!app.keyWaiters) {
      app.keyWaiters = [];
      showKeyForm(keyUsed ? 'That key was not accepted.' : 'This Rushes node needs an API key to search.', error.message);
    }
    return new Promise((resolve, reject) => {
      app.keyWaiters.push({ resolve, reject, error });
      if (signal) signal.addEventListener('abort', () => reject(new DOMException('aborted', 'AbortError')), { once: true });
    });
  }

  function setKey(key) {
    app.apiKey = key || null;
    try {
      if (key) sessionStorage.setItem(KEY_STORAGE, key); else sessionStorage.removeItem(KEY_STORAGE);
    } catch (e) { /* storage off: the key lives in this page only */ }
    renderKeyStatus();
  }

  function showKeyForm(message, detail) {
    const panel = $('#auth-panel');
    $('#auth-message').textContent = message;
    $('#auth-detail').textContent = detail ? `The node said: ${detail}` : '';
    $('#auth-detail').hidden = !detail;
    panel.hidden = false;
    $('#auth-key').value = '';
    $('#auth-key').focus();
  }

  function settleKeyWaiters(ok) {
    const waiters = app.keyWaiters || [];
    app.keyWaiters = null;
    $('#auth-panel').hidden = true;
    for (const w of waiters) ok ? w.resolve() : w.reject(w.error);
  }

  function renderKeyStatus() {
    const box = $('#key-status');
    box.replaceChildren();
    if (app.apiKey) {
      box.append(h('span', { class: 'key-on', title: 'An API key is kept for this tab (sessionStorage) and sent as Authorization: Bearer' }, 'API key set'),
        h('button', { type: 'button', class: 'link', onclick: () => { setKey(null); status('API key forgotten for this tab.'); } }, 'Forget key'));
    } else {
      box.append(h('button', { type: 'button', class: 'link', onclick: () => showKeyForm('Enter an API key for this Rushes node (kept for this tab only).') }, 'Use an API key'));
    }
  }

  /** An error in words for people. */
  function describeError(e) {
    if (!(e instanceof ApiError)) return 'Something went wrong in the page: ' + (e && e.message ? e.message : e);
    let text = e.message;
    if (e.status === 429) text += ` The node is busy; retry ${e.retryAfter ? `in ${e.retryAfter} s` : 'in a moment'}.`;
    else if (e.status === 503) text += ` The node is unavailable right now; retry ${e.retryAfter ? `in ${e.retryAfter} s` : 'in a moment'}.`;
    else if (e.status === 403) text += ' Your API key lacks the scope this needs (search needs "read").';
    else if (e.status >= 500) text += ' (server error ' + e.status + '; the node log says more)';
    return text;
  }

  function showError(e, retry) {
    const box = $('#error');
    box.replaceChildren(h('strong', {}, e && e.status ? `Error ${e.status}` + (e.code ? ` (${e.code})` : '') + ': ' : 'Error: '),
      describeError(e));
    const retryable = e instanceof ApiError && (e.status === 0 && e.code === 'network' || e.status === 429 || e.status >= 500);
    if (retry && retryable) box.append(' ', h('button', { type: 'button', onclick: () => { hideError(); retry(); } }, 'Retry'));
    box.hidden = false;
  }
  function hideError() { $('#error').hidden = true; $('#error').replaceChildren(); }

  function status(text) { $('#status').textContent = text; }

  /* ---------- Asset records --------------------------------------------------------------- */

  async function loadRecords(ids, signal) {
    const missing = [...new Set(ids)].filter((id) => !app.assets.has(id));
    let i = 0;
    const worker = async () => {
      while (i < missing.length) {
        const id = missing[i++];
        try {
          app.assets.set(id, await api('/v1/assets/' + encodeURIComponent(id), { signal }));
        } catch (e) {
          if (e.name === 'AbortError') throw e;
          if (e.status === 404) app.assets.set(id, { asset_id: id, missing: true });
          else app.assets.set(id, { asset_id: id, failed: describeError(e), transient: true });
        }
      }
    };
    await Promise.all([1, 2, 3, 4, 5, 6].map(worker));
    for (const id of ids) {
      const r = app.assets.get(id);
      if (r && r.series) app.seriesSeen.add(r.series);
    }
  }

  function record(id) { return app.assets.get(id) || { asset_id: id }; }
  function assetFps(id) { const r = record(id); return fpsInfo(r.fps) ? r.fps : null; }

  /** Timecode if the asset's fps is known, else a clock time. */
  function tc(ms, fps) { return fps ? msToTimecode(ms, fps) : msToClock(ms); }

  function episodeCode(a) {
    if (a.season != null && a.episode != null) return `S${String(a.season).padStart(2, '0')}E${String(a.episode).padStart(2, '0')}`;
    if (a.season != null) return `Season ${a.season}`;
    if (a.episode != null) return `Episode ${a.episode}`;
    return '';
  }

  /* ---------- Form <-> state -------------------------------------------------------------- */

  function fillForms(state) {
    $('#q').value = state.q;
    $('#f-series').value = state.series.join(', ');
    $('#f-season').value = state.season == null ? '' : state.season;
    $('#f-episode').value = state.episode == null ? '' : state.episode;
    $('#f-from').value = formatTimeInput(state.from_ms);
    $('#f-to').value = formatTimeInput(state.to_ms);
    for (const r of $$('input[name="mode"]')) r.checked = r.value === state.mode;
    ensureOption($('#f-per'), state.per);
    ensureOption($('#f-limit'), state.limit);
    for (const id of ['#f-from', '#f-to', '#f-season', '#f-episode']) $(id).removeAttribute('aria-invalid');
  }

  function ensureOption(select, value) {
    if (![...select.options].some((o) => Number(o.value) === value)) select.append(h('option', { value: String(value) }, String(value)));
    select.value = String(value);
  }

  /** The state the forms describe; throws RangeError naming a bad field. */
  function stateFromForms() {
    const s = Object.assign({}, app.state, { cursor: null, page: 1 });
    s.q = $('#q').value;
    s.series = $('#f-series').value.split(',').map((x) => x.trim()).filter(Boolean);
    const int = (sel, name) => {
      const v = $(sel).value.trim();
      if (v === '') return null;
      if (!/^\d+$/.test(v)) { $(sel).setAttribute('aria-invalid', 'true'); throw new RangeError(`${name} must be a whole number`); }
      $(sel).removeAttribute('aria-invalid');
      return Number(v);
    };
    s.season = int('#f-season', 'Season');
    s.episode = int('#f-episode', 'Episode');
    const time = (sel, name) => {
      try { const v = parseTimeInput($(sel).value); $(sel).removeAttribute('aria-invalid'); return v; }
      catch (e) { $(sel).setAttribute('aria-invalid', 'true'); throw new RangeError(`${name}: ${e.message}`); }
    };
    s.from_ms = time('#f-from', 'From');
    s.to_ms = time('#f-to', 'To');
    if (s.from_ms != null && s.to_ms != null && s.to_ms <= s.from_ms) {
      $('#f-to').setAttribute('aria-invalid', 'true');
      throw new RangeError('To must be after From');
    }
    const mode = $$('input[name="mode"]').find((r) => r.checked);
    s.mode = mode ? mode.value : 'intersection';
    s.per = Number($('#f-per').value) || 5;
    s.limit = Number($('#f-limit').value) || 20;
    return s;
  }

  function submitForms() {
    let s;
    try { s = stateFromForms(); } catch (e) { showError(new ApiError(0, 'invalid_input', e.message)); return; }
    closeSuggest();
    navigate(s, { cursors: [] });
  }

  /* ---------- Navigation and history ------------------------------------------------------ */

  /** Goes to a state: a new history entry when the URL changes, then searches. */
  function navigate(state, { cursors = [], focusClip = null, replace = false } = {}) {
    const url = location.pathname + encodeState(state);
    const entry = { cursors, rushes: 1 };
    if (replace || url === location.pathname + location.search) history.replaceState(entry, '', url);
    else history.pushState(entry, '', url);
    app.cursors = cursors;
    return search(state, { focusClip });
  }

  window.addEventListener('popstate', (ev) => {
    const s = decodeState(location.search);
    app.cursors = (ev.state && ev.state.cursors) || [];
    fillForms(s);
    search(s);
  });

  /* ---------- Search ---------------------------------------------------------------------- */

  async function search(state, { focusClip = null } = {}) {
    app.state = state;
    fillForms(state);
    hideError();
    if (app.searchAbort) app.searchAbort.abort();
    if (!state.q.trim()) {
      app.response = null;
      renderIntro();
      app.searchSeq++;  // a search still in flight is aborted and must not draw over the intro
      document.body.classList.remove('busy');
      $('#results').removeAttribute('aria-busy');
      app.searchesDone++;
      return;
    }
    const seq = ++app.searchSeq;
    const abort = new AbortController();
    app.searchAbort = abort;
    app.lastAction = () => search(state, { focusClip });
    document.body.classList.add('busy');
    $('#results').setAttribute('aria-busy', 'true');
    status('Searching…');
    try {
      const response = await api('/v1/search', { method: 'POST', body: searchRequest(state), signal: abort.signal });
      await loadRecords(response.assets.map((a) => a.asset_id), abort.signal);
      if (seq !== app.searchSeq) return;
      app.response = response;
      for (const a of response.assets) if (a.series) app.seriesSeen.add(a.series);
      renderSeriesOptions();
      renderUnderstanding(response, state);
      renderResults(response, state);
      document.title = `${state.q.trim()} · Rushes`;
      const clips = response.assets.reduce((n, a) => n + a.clips.length, 0);
      status(`${response.total_assets} episode${response.total_assets === 1 ? '' : 's'} match; showing ${response.assets.length} with ${clips} clip${clips === 1 ? '' : 's'}.`);
      if (focusClip) focusClipAt(focusClip);
    } catch (e) {
      if (e.name === 'AbortError') return;
      if (seq !== app.searchSeq) return;
      app.response = null;
      renderUnderstanding(null, state);
      $('#episodes').replaceChildren();
      $('#results-bar-summary').textContent = '';
      renderPager(null, state);
      showError(e, () => search(state, { focusClip }));
      status('The search failed.');
    } finally {
      if (seq === app.searchSeq) {
        document.body.classList.remove('busy');
        $('#results').removeAttribute('aria-busy');
        app.searchesDone++;
      }
    }
  }

  function renderIntro() {
    renderUnderstanding(null, app.state);
    $('#episodes').replaceChildren($('#intro-template').content.cloneNode(true));
    $('#results-bar-summary').textContent = '';
    renderPager(null, app.state);
    updateSelectionUi();
    document.title = 'Rushes · footage search';
    status('');
  }

  function renderSeriesOptions() {
    const list = $('#series-options');
    list.replaceChildren(...[...app.seriesSeen].sort().map((s) => h('option', { value: s })));
  }

  /* ---------- Understanding: did you mean, chips ------------------------------------------ */

  function renderUnderstanding(response, state) {
    const box = $('#understanding');
    box.replaceChildren();
    const u = response && response.understanding;
    const parts = [];
    const fixes = corrections(u);
    if (fixes.length) {
      const corrected = applyCorrections(state.q, fixes);
      parts.push(h('p', { class: 'didyoumean' },
        'Did you mean ',
        h('a', { href: location.pathname + encodeState(Object.assign({}, state, { q: corrected, cursor: null, page: 1 })),
          onclick: (ev) => { ev.preventDefault(); navigate(Object.assign({}, state, { q: corrected, cursor: null, page: 1 })); } },
        corrected),
        '? ',
        h('span', { class: 'muted' }, 'Results below are for the corrected ',
          fixes.map((f, i) => [i ? ', ' : '', h('s', {}, f.typed), ' → ', h('b', {}, f.label)]), '.')));
    }
    const chips = [];
    if (u) for (const c of understandingChips(u)) chips.push(Object.assign({ source: 'q' }, c));
    // Explicit filters (filter bar) also show as chips; they win over the same filter in the text.
    const explicit = [];
    if (state.series.length) explicit.push({ key: 'series', text: `series ${state.series.join(' or ')}` });
    if (state.season != null) explicit.push({ key: 'season', text: `season ${state.season}` });
    if (state.episode != null) explicit.push({ key: 'episode', text: `episode ${state.episode}` });
    if (state.from_ms != null) explicit.push({ key: 'from_ms', text: `from ${formatTimeInput(state.from_ms)}` });
    if (state.to_ms != null) explicit.push({ key: 'to_ms', text: `to ${formatTimeInput(state.to_ms)}` });
    // The filter bar wins (the server applies a text filter only when the request has none of
    // that kind; the time window counts as one): text filters it overrides are not shown.
    const explicitKeys = new Set(explicit.map((f) => f.key));
    if (explicitKeys.has('from_ms') || explicitKeys.has('to_ms')) { explicitKeys.add('from_ms'); explicitKeys.add('to_ms'); }
    const shown = chips.filter((c) => !(c.id.startsWith('filter:') && explicitKeys.has(c.id.slice(7))));
    for (const f of explicit) shown.push({ id: 'explicit:' + f.key, kind: 'filter', text: f.text, title: 'filter from the filter bar', source: 'filters' });
    if (shown.length) {
      const kindLabel = u && u.kind ? normalizeKind(u.kind).replace(/_/g, '-') : '';
      const list = h('ul', { class: 'chips', 'aria-label': 'What the query became; remove a part to search without it' });
      shown.forEach((c, i) => {
        const action = c.kind !== 'then' && c.kind !== 'while' ? `Remove ${c.text}` : `Remove "${c.text}": search the parts together`;
        list.append(h('li', { class: `chip chip-${c.kind}${c.track ? ' track-' + c.track : ''}${c.removable === false ? ' fixed' : ''}`, title: c.title },
          c.kind === 'label' ? h('span', { class: 'chip-track' }, c.track) : null,
          h('span', { class: 'chip-text' }, c.text),
          c.removable === false ? null
            : h('button', { type: 'button', class: 'chip-x', 'aria-label': action, title: action, dataset: { chip: c.id, index: String(i) },
              onclick: () => removeChip(c, i) }, '×')));
      });
      parts.push(h('div', { class: 'chips-row' }, h('span', { class: 'chips-caption' }, kindLabel ? `Understood (${kindLabel}):` : 'Understood:'), list));
    }
    if (u && u.ignored_words && u.ignored_words.length) {
      parts.push(h('p', { class: 'muted small' }, 'Ignored words: ', u.ignored_words.join(', ')));
    }
    for (const w of (response && response.warnings) || []) parts.push(h('p', { class: 'warning' }, '⚠ ', w));
    append(box, parts);
    box.hidden = parts.length === 0;
  }

  function removeChip(chip, index) {
    let next;
    if (chip.id.startsWith('explicit:')) {
      const key = chip.id.slice(9);
      next = Object.assign({}, app.state, { cursor: null, page: 1 });
      if (key === 'series') next.series = []; else next[key] = null;
    } else {
      next = stateWithoutChip(app.state, app.response && app.response.understanding, chip.id);
    }
    navigate(next).then(() => {
      const buttons = $$('#understanding .chip-x');
      const target = buttons[Math.min(index, buttons.length - 1)];
      (target || $('#q')).focus();
    });
  }

  /* ---------- Results --------------------------------------------------------------------- */

  function clipKey(assetId, clip) { return `${assetId}|${clip.start_ms}|${clip.end_ms}`; }

  function renderResults(response, state) {
    const box = $('#episodes');
    box.replaceChildren();
    const shards = response.shards || {};
    const first = (state.page - 1) * state.limit + 1;
    const summary = [];
    if (response.assets.length) {
      summary.push(`Episodes ${first}–${first + response.assets.length - 1} of ${response.total_assets}`);
    } else summary.push(`No episode matches`);
    summary.push(`${response.took_ms} ms`);
    if (shards.total != null) summary.push(`${shards.ok} of ${shards.total} shards answered`);
    $('#results-bar-summary').textContent = summary.join(' · ');
    if (shards.failed) {
      box.append(h('p', { class: 'warning', role: 'note' },
        `⚠ ${shards.failed} shard${shards.failed === 1 ? '' : 's'} did not answer in time: results may be incomplete. Retry to ask again.`));
    }
    if (!response.assets.length) {
      box.append(h('div', { class: 'empty' }, h('p', {}, 'No clips match this search.'),
        h('p', { class: 'muted' }, state.mode === 'intersection'
          ? 'In "all at once" mode every part must hold in the same second: try "any" mode, or remove a chip or a filter.'
          : 'Try removing a chip or a filter, or check the spelling.')));
    }
    const maxScore = Math.max(1e-9, ...response.assets.map((a) => a.score || 0));
    response.assets.forEach((a, ai) => box.append(renderEpisode(a, ai, maxScore, state)));
    renderPager(response, state);
    updateSelectionUi();
  }

  function renderEpisode(a, ai, maxScore, state) {
    const rec = record(a.asset_id);
    const fps = assetFps(a.asset_id);
    const title = a.title || rec.title;
    const series = a.series || rec.series;
    const code = episodeCode({ season: a.season != null ? a.season : rec.season, episode: a.episode != null ? a.episode : rec.episode });
    const duration = Number(rec.duration_ms) || null;
    const headingId = `ep-${ai}-title`;
    const meta = [];
    if (series) meta.push(h('span', { class: 'series' }, series));
    meta.push(h('span', { class: 'asset-id', title: 'asset id' }, a.asset_id));
    if (duration) meta.push(h('span', { title: 'duration' }, `${tc(duration, fps)} (${formatDuration(duration)})`));
    if (fps) {
      const info = fpsInfo(fps);
      meta.push(h('span', { title: info.ntsc ? `timecode at ${info.nominal} fps non-drop-frame` : 'timecode base' },
        `${fps} fps${info.ntsc ? ` · TC ${info.nominal} NDF` : ''}`));
    } else {
      meta.push(h('span', { class: 'warning-inline', title: rec.failed || 'the asset record has no fps' },
        rec.failed ? `asset record unavailable (${rec.failed}): times in h:mm:ss.ms`
          : rec.missing ? 'no asset record (no fps): times in h:mm:ss.ms, not exportable'
            : 'no fps in the asset record: times in h:mm:ss.ms, not exportable'));
    }
    meta.push(h('span', { title: 'score of the best clip' }, `best ${a.score.toFixed(2)}`));
    const article = h('article', { class: 'episode', 'aria-labelledby': headingId, dataset: { asset: a.asset_id } },
      h('header', { class: 'ep-head' },
        h('h2', { id: headingId },
          code ? h('span', { class: 'ep-code' }, code) : null,
          h('span', { class: 'ep-title' }, title || a.asset_id)),
        h('div', { class: 'ep-meta' }, meta.map((m, i) => [i ? h('span', { class: 'sep', 'aria-hidden': 'true' }, '·') : null, m]))),
      renderTimeline(a, ai, duration, fps),
      h('ol', { class: 'clips', 'aria-label': `Clips of ${code || ''} ${title || a.asset_id}`.trim() },
        a.clips.map((c, ci) => renderClip(a, c, ai, ci, fps, maxScore, state, { code, title, series, duration }))));
    return article;
  }

  function renderTimeline(a, ai, duration, fps) {
    const end = duration || Math.max(...a.clips.map((c) => c.end_ms));
    const strip = h('div', { class: 'tl-track' });
    for (let i = 0; i <= 4; i++) {
      strip.append(h('span', { class: 'tl-tick', style: { left: `${(100 * i) / 4}%` }, 'aria-hidden': 'true' }));
    }
    a.clips.forEach((c, ci) => {
      const left = Math.min(100, (100 * c.start_ms) / end);
      const width = Math.max(0, (100 * (c.end_ms - c.start_ms)) / end);
      strip.append(h('div', { class: 'tl-clip' + (width < 1.6 ? ' narrow' : ''), dataset: { key: clipKey(a.asset_id, c), target: `clip-${ai}-${ci}` },
        style: { left: `${left}%`, width: `${width}%` },
        title: `Clip ${ci + 1}: ${tc(c.start_ms, fps)} – ${tc(c.end_ms, fps)} (score ${c.score.toFixed(2)})`,
        onclick: () => focusClipElement($(`#clip-${ai}-${ci}`)) }, h('span', { class: 'tl-num' }, String(ci + 1))));
    });
    const labels = h('div', { class: 'tl-labels', 'aria-hidden': 'true' },
      [0, 1, 2, 3, 4].map((i) => h('span', { style: { left: `${(100 * i) / 4}%` } }, tc((end * i) / 4, fps))));
    const where = a.clips.map((c, ci) => `clip ${ci + 1} at ${tc(c.start_ms, fps)}`).join(', ');
    return h('div', { class: 'timeline', role: 'img',
      'aria-label': `Timeline of ${duration ? 'the episode' : 'the clips (episode duration unknown)'}: ${where}` }, strip, labels,
    duration ? null : h('p', { class: 'muted small' }, 'The asset record has no duration: the strip spans up to the last clip.'));
  }

  /** Evidence grouped by track: labels with their best confidence, dialogue lines with highlights. */
  function groupEvidence(matches) {
    const groups = new Map();
    for (const m of matches || []) {
      if (!groups.has(m.track)) groups.set(m.track, { labels: new Map(), lines: new Map() });
      const g = groups.get(m.track);
      if (m.text != null) {
        if (!g.lines.has(m.annotation_id)) g.lines.set(m.annotation_id, m);
      } else {
        const key = m.label || m.annotation_id;
        const cur = g.labels.get(key);
        if (!cur) g.labels.set(key, { label: key, confidence: m.confidence, similarity: m.similarity, count: 1 });
        else {
          cur.count++;
          cur.confidence = Math.max(cur.confidence, m.confidence);
          if (m.similarity != null) cur.similarity = Math.max(cur.similarity || -Infinity, m.similarity);
        }
      }
    }
    const order = (t) => { const i = TRACK_ORDER.indexOf(t); return i < 0 ? 99 : i; };
    return [...groups.entries()].sort((x, y) => order(x[0]) - order(y[0]) || x[0].localeCompare(y[0]));
  }

  function highlighted(text, m, qWords) {
    const pieces = m.highlights && m.highlights.length ? highlightByteRanges(text, m.highlights) : highlightWords(text, qWords);
    return pieces.map((p) => (p.hit ? h('mark', {}, p.text) : p.text));
  }

  function renderEvidence(clip, state) {
    const qWords = queryWords(state.q);
    const box = h('div', { class: 'evidence' });
    for (const [track, g] of groupEvidence(clip.matches)) {
      const name = TRACK_NAMES[track] || track;
      const row = h('div', { class: `ev-row track-${track}` }, h('span', { class: 'ev-track' }, name));
      if (g.labels.size) {
        row.append(h('span', { class: 'ev-labels' }, [...g.labels.values()].map((l) =>
          h('span', { class: 'ev-label', title: `${name}: ${l.label}, confidence ${(l.confidence * 100).toFixed(0)}%` +
            (l.similarity != null ? `, similarity ${l.similarity.toFixed(2)}` : '') + (l.count > 1 ? `, ${l.count} annotations` : '') },
          l.label, h('span', { class: 'conf' }, ` ${(l.confidence * 100).toFixed(0)}%`),
          l.similarity != null ? h('span', { class: 'sim' }, ` ≈${l.similarity.toFixed(2)}`) : null))));
      }
      if (g.lines.size) {
        const lines = [...g.lines.values()];
        const list = h('ul', { class: 'ev-lines' });
        lines.forEach((m, i) => list.append(h('li', { hidden: i >= 3, title: `confidence ${(m.confidence * 100).toFixed(0)}%` },
          '“', highlighted(m.text, m, qWords), '”')));
        row.append(list);
        if (lines.length > 3) {
          const more = h('button', { type: 'button', class: 'link small', 'aria-expanded': 'false' }, `+${lines.length - 3} more lines`);
          more.addEventListener('click', () => {
            const open = more.getAttribute('aria-expanded') !== 'true';
            $$('li', list).forEach((li, i) => { li.hidden = !open && i >= 3; });
            more.setAttribute('aria-expanded', String(open));
            more.textContent = open ? 'fewer lines' : `+${lines.length - 3} more lines`;
          });
          row.append(more);
        }
      }
      box.append(row);
    }
    if (!box.childNodes.length) box.append(h('span', { class: 'muted small' }, 'no evidence returned'));
    return box;
  }

  function evidenceSummary(clip) {
    const labels = [];
    let line = null;
    for (const [, g] of groupEvidence(clip.matches)) {
      for (const l of g.labels.values()) if (!labels.includes(l.label)) labels.push(l.label);
      if (!line && g.lines.size) line = [...g.lines.values()][0].text;
    }
    return { labels, line };
  }

  function renderClip(a, c, ai, ci, fps, maxScore, state, ep) {
    const key = clipKey(a.asset_id, c);
    const id = `clip-${ai}-${ci}`;
    const tin = tc(c.start_ms, fps), tout = tc(c.end_ms, fps);
    const frames = fps ? Math.max(1, msToFrames(c.end_ms, fps) - msToFrames(c.start_ms, fps)) : null;
    const label = `clip ${ci + 1} of ${ep.code || a.asset_id}, ${tin} to ${tout}`;
    const checkbox = h('input', { type: 'checkbox', class: 'sel', id: id + '-sel', 'aria-label': `Select ${label}`,
      checked: app.selection.has(key), dataset: { key } });
    checkbox.addEventListener('change', () => toggleSelection(a, c, ep, state, checkbox.checked));
    const panelId = id + '-tracks';
    const tracksBtn = h('button', { type: 'button', class: 'tracks-btn', 'aria-expanded': 'false', 'aria-controls': panelId,
      'aria-keyshortcuts': 't', title: 'Show the fused tracks around this clip (t)' }, 'Tracks');
    const panel = h('div', { class: 'tracks-panel', id: panelId, hidden: true });
    tracksBtn.addEventListener('click', () => toggleTracks(a, c, fps, tracksBtn, panel, ep));
    const li = h('li', { class: 'clip' + (app.selection.has(key) ? ' selected' : ''), id, tabindex: '-1', 'aria-label': label, dataset: { key, asset: a.asset_id, start: String(c.start_ms) } },
      h('div', { class: 'clip-main' },
        h('div', { class: 'clip-sel' }, checkbox, h('span', { class: 'clip-num', 'aria-hidden': 'true' }, String(ci + 1))),
        h('div', { class: 'clip-tc' },
          h('span', { class: 'tc-in', title: 'in' }, tin), h('span', { class: 'tc-sep', 'aria-hidden': 'true' }, '→'), h('span', { class: 'tc-out', title: 'out (exclusive)' }, tout),
          h('div', { class: 'tc-dur muted small' }, formatDuration(c.end_ms - c.start_ms) + (frames ? ` · ${frames} fr` : ''))),
        h('div', { class: 'clip-score', title: `score ${c.score}` },
          h('span', { class: 'score-num' }, c.score.toFixed(2)),
          h('span', { class: 'score-bar', 'aria-hidden': 'true' }, h('span', { style: { width: `${Math.max(2, Math.min(100, (100 * c.score) / maxScore))}%` } }))),
        renderEvidence(c, state),
        h('div', { class: 'clip-actions' }, tracksBtn)),
      panel);
    return li;
  }

  function renderPager(response, state) {
    const nav = $('#pager');
    nav.replaceChildren();
    if (!response || (!response.next_cursor && state.page <= 1)) { nav.hidden = true; return; }
    nav.hidden = false;
    const prev = h('button', { type: 'button', disabled: state.page <= 1, 'aria-keyshortcuts': 'p' }, app.cursors.length >= state.page - 1 ? '← Previous page' : '← First page');
    prev.addEventListener('click', () => goPage(-1));
    const next = h('button', { type: 'button', disabled: !response.next_cursor, 'aria-keyshortcuts': 'n' }, 'Next page →');
    next.addEventListener('click', () => goPage(1));
    nav.append(prev, h('span', { class: 'page-num' }, `Page ${state.page}`), next);
  }

  function goPage(delta) {
    const s = app.state;
    if (delta > 0) {
      if (!app.response || !app.response.next_cursor) return;
      navigate(Object.assign({}, s, { cursor: app.response.next_cursor, page: s.page + 1 }), { cursors: app.cursors.concat([s.cursor]) });
    } else {
      if (s.page <= 1) return;
      if (app.cursors.length >= s.page - 1 && app.cursors.length) {
        const cursors = app.cursors.slice(0, -1);
        const cursor = app.cursors[app.cursors.length - 1];
        navigate(Object.assign({}, s, { cursor, page: cursor ? s.page - 1 : 1 }), { cursors });
      } else {
        navigate(Object.assign({}, s, { cursor: null, page: 1 }), { cursors: [] });
      }
    }
    $('#results').scrollIntoView({ block: 'start' });
  }

  /* ---------- Fused tracks around a clip -------------------------------------------------- */

  async function toggleTracks(a, c, fps, button, panel, ep) {
    const open = button.getAttribute('aria-expanded') !== 'true';
    button.setAttribute('aria-expanded', String(open));
    panel.hidden = !open;
    if (!open) return;
    const duration = Number(record(a.asset_id).duration_ms) || null;
    let from = Math.max(0, Math.floor((c.start_ms - TRACKS_PADDING_MS) / 1000) * 1000);
    let to = Math.ceil((c.end_ms + TRACKS_PADDING_MS) / 1000) * 1000;
    if (duration) to = Math.min(to, Math.ceil(duration / 1000) * 1000);
    if (to - from > 3600000) to = from + 3600000;
    panel.replaceChildren(h('p', { class: 'muted small' }, 'Loading the fused tracks…'));
    try {
      const data = await api(`/v1/assets/${encodeURIComponent(a.asset_id)}/buckets?from_ms=${from}&to_ms=${to}`);
      panel.replaceChildren(renderTracks(data, from, to, c, fps, ep));
    } catch (e) {
      panel.replaceChildren(h('p', { class: 'error-inline', role: 'alert' }, 'Could not load the tracks: ', describeError(e), ' ',
        h('button', { type: 'button', onclick: () => { button.setAttribute('aria-expanded', 'false'); toggleTracks(a, c, fps, button, panel, ep); } }, 'Retry')));
    }
  }

  function renderTracks(data, from, to, clip, fps, ep) {
    const bucket = data.bucket_ms || 1000;
    const span = to - from;
    // Each annotation's runs of consecutive buckets.
    // Labels (characters, places, objects) merge per label: one bar while a label is present,
    // whichever annotation carries it. Dialogue lines and shots stay one bar per annotation.
    const byAnn = new Map();
    for (const b of data.buckets || []) {
      const t = b.second * bucket;
      for (const an of b.annotations || []) {
        const perAnnotation = an.text != null || an.track === 'shot' || an.label == null;
        const key = perAnnotation ? 'id\u0000' + an.annotation_id : `label\u0000${an.track}\u0000${an.label}`;
        let e = byAnn.get(key);
        if (!e) { e = { an, times: new Set(), conf: an.confidence, ids: new Set() }; byAnn.set(key, e); }
        e.times.add(t);
        e.ids.add(an.annotation_id);
        e.conf = Math.max(e.conf, an.confidence);
      }
    }
    const items = [];
    for (const e of byAnn.values()) {
      const times = [...e.times].sort((x, y) => x - y);
      let start = times[0], last = times[0];
      for (const t of times.slice(1).concat([Infinity])) {
        if (t !== last + bucket) { items.push({ an: e.an, conf: e.conf, ids: e.ids, start, end: last + bucket }); start = t; }
        last = t;
      }
    }
    const tracks = new Map();
    for (const it of items) {
      if (!tracks.has(it.an.track)) tracks.set(it.an.track, []);
      tracks.get(it.an.track).push(it);
    }
    const order = (t) => { const i = TRACK_ORDER.indexOf(t); return i < 0 ? 99 : i; };
    const pct = (ms) => `${(100 * (Math.min(Math.max(ms, from), to) - from)) / span}%`;
    const widthPct = (s, e) => `${(100 * (Math.min(e, to) - Math.max(s, from))) / span}%`;
    const grid = h('div', { class: 'tp-grid' });
    // Axis with ticks.
    const step = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600].map((s) => s * 1000).find((s) => span / s <= 8) || 600000;
    const axis = h('div', { class: 'tp-axis', 'aria-hidden': 'true' });
    for (let t = Math.ceil(from / step) * step; t <= to; t += step) axis.append(h('span', { style: { left: pct(t) } }, tc(t, fps)));
    grid.append(h('div', { class: 'tp-lane tp-axis-lane' }, h('div', { class: 'tp-name' }, ''), h('div', { class: 'tp-rows' }, axis,
      h('div', { class: 'tp-band', style: { left: pct(clip.start_ms), width: widthPct(clip.start_ms, clip.end_ms) } }))));
    const sorted = [...tracks.entries()].sort((x, y) => order(x[0]) - order(y[0]) || x[0].localeCompare(y[0]));
    for (const [track, list] of sorted) {
      list.sort((x, y) => x.start - y.start || y.end - x.end);
      const rows = [];
      const rowOfLabel = new Map();
      for (const it of list) {
        // One row per label on label tracks (its bars line up), packed rows otherwise.
        const labelKey = it.an.text == null && it.an.track !== 'shot' && it.an.label != null ? it.an.label : null;
        let r = labelKey != null && rowOfLabel.has(labelKey) ? rowOfLabel.get(labelKey) : -1;
        if (r < 0) {
          r = labelKey != null ? -1 : rows.findIndex((row) => row[row.length - 1].end <= it.start && row.packed);
          if (r < 0) { rows.push(Object.assign([], { packed: labelKey == null })); r = rows.length - 1; }
          if (labelKey != null) rowOfLabel.set(labelKey, r);
        }
        rows[r].push(it);
      }
      const rowsEl = h('div', { class: 'tp-rows' },
        h('div', { class: 'tp-band', style: { left: pct(clip.start_ms), width: widthPct(clip.start_ms, clip.end_ms) } }));
      for (const row of rows) {
        const rowEl = h('div', { class: 'tp-row' });
        for (const it of row) {
          const text = it.an.text != null ? it.an.text : (it.an.label || it.an.annotation_id);
          rowEl.append(h('div', { class: `tp-item track-${track}`, style: { left: pct(it.start), width: widthPct(it.start, it.end), opacity: String(0.45 + 0.55 * it.conf) },
            title: `${TRACK_NAMES[track] || track}: ${text}\n${tc(it.start, fps)} – ${tc(it.end, fps)} · best confidence ${(it.conf * 100).toFixed(0)}% · ${it.an.model || ''} ${[...it.ids].slice(0, 3).join(', ')}${it.ids.size > 3 ? ` +${it.ids.size - 3}` : ''}` },
          h('span', {}, text)));
        }
        rowsEl.append(rowEl);
      }
      grid.append(h('div', { class: `tp-lane track-${track}` }, h('div', { class: 'tp-name' }, TRACK_NAMES[track] || track), rowsEl));
    }
    // A text list for screen readers and copy-paste.
    const textList = h('details', { class: 'tp-text' }, h('summary', {}, `As a list (${items.length} annotation runs)`),
      h('ul', {}, items.sort((x, y) => x.start - y.start).map((it) => h('li', {},
        `${tc(it.start, fps)} – ${tc(it.end, fps)} · ${TRACK_NAMES[it.an.track] || it.an.track}: ${it.an.text != null ? it.an.text : it.an.label || it.an.annotation_id} (${(it.conf * 100).toFixed(0)}%)`))));
    return h('div', { class: 'tp' },
      h('p', { class: 'tp-head small' }, `Fused tracks ${tc(from, fps)} – ${tc(to, fps)} (the clip ± ${TRACKS_PADDING_MS / 1000} s, ${bucket / 1000}-second buckets); the clip is shaded.`),
      items.length ? grid : h('p', { class: 'muted small' }, 'No annotations in this window.'),
      items.length ? textList : null);
  }

  /* ---------- Selection and export -------------------------------------------------------- */

  function loadSelection() {
    try {
      const list = JSON.parse(sessionStorage.getItem(SELECTION_STORAGE) || '[]');
      for (const s of list) if (s && s.key) app.selection.set(s.key, s);
    } catch (e) { /* nothing kept */ }
  }
  function saveSelection() {
    try { sessionStorage.setItem(SELECTION_STORAGE, JSON.stringify([...app.selection.values()])); } catch (e) { /* ignore */ }
  }

  function selectionEntry(a, c, ep, state) {
    const { labels, line } = evidenceSummary(c);
    return { key: clipKey(a.asset_id, c), asset_id: a.asset_id, start_ms: c.start_ms, end_ms: c.end_ms, fps: assetFps(a.asset_id),
      score: c.score, title: ep.title || null, series: ep.series || null, code: ep.code || '', labels, line, query: state.q.trim() };
  }

  function toggleSelection(a, c, ep, state, on) {
    const key = clipKey(a.asset_id, c);
    if (on) app.selection.set(key, selectionEntry(a, c, ep, state)); else app.selection.delete(key);
    saveSelection();
    updateSelectionUi();
  }

  function pageClips() {
    const out = [];
    if (!app.response) return out;
    app.response.assets.forEach((a) => {
      const rec = record(a.asset_id);
      const ep = { title: a.title || rec.title, series: a.series || rec.series,
        code: episodeCode({ season: a.season != null ? a.season : rec.season, episode: a.episode != null ? a.episode : rec.episode }) };
      a.clips.forEach((c) => out.push({ a, c, ep }));
    });
    return out;
  }

  function selectAllOnPage(on) {
    for (const { a, c, ep } of pageClips()) {
      const key = clipKey(a.asset_id, c);
      if (on && !app.selection.has(key)) app.selection.set(key, selectionEntry(a, c, ep, app.state));
      if (!on) app.selection.delete(key);
    }
    saveSelection();
    updateSelectionUi();
  }

  function updateSelectionUi() {
    for (const cb of $$('#episodes input.sel')) {
      const on = app.selection.has(cb.dataset.key);
      cb.checked = on;
      cb.closest('.clip').classList.toggle('selected', on);
    }
    for (const m of $$('#episodes .tl-clip')) m.classList.toggle('selected', app.selection.has(m.dataset.key));
    const keys = pageClips().map(({ a, c }) => clipKey(a.asset_id, c));
    const onPage = keys.filter((k) => app.selection.has(k)).length;
    const all = $('#select-all');
    all.disabled = keys.length === 0;
    all.checked = keys.length > 0 && onPage === keys.length;
    all.indeterminate = onPage > 0 && onPage < keys.length;
    const n = app.selection.size;
    $('#selection-count').textContent = n ? `${n} clip${n === 1 ? '' : 's'} selected${n > onPage ? ` (${n - onPage} from other pages or searches)` : ''}` : 'No clips selected';
    for (const id of ['#export-edl', '#export-csv', '#clear-selection']) $(id).disabled = n === 0;
  }

  function exportClips() {
    const list = [...app.selection.values()];
    const usable = list.filter((s) => fpsInfo(s.fps));
    const skipped = list.length - usable.length;
    return { usable, skipped };
  }

  function clipComment(s) {
    const parts = [];
    const ep = [s.series, s.code].filter(Boolean).join(' ');
    if (ep) parts.push(ep);
    if (s.title) parts.push(s.title);
    parts.push(`score ${Number(s.score).toFixed(2)}`);
    if (s.labels && s.labels.length) parts.push(s.labels.join(', '));
    if (s.line) parts.push(`"${s.line}"`);
    if (s.query) parts.push(`query: ${s.query}`);
    return parts.join(' | ');
  }

  function slug(text) {
    return String(text || 'selection').toLowerCase().replace(/[^a-z0-9]+/g, '-').replace(/^-+|-+$/g, '').slice(0, 40) || 'selection';
  }

  function stamp() {
    const d = new Date();
    const two = (v) => String(v).padStart(2, '0');
    return `${d.getFullYear()}${two(d.getMonth() + 1)}${two(d.getDate())}-${two(d.getHours())}${two(d.getMinutes())}`;
  }

  function download(text, filename, type) {
    const blob = new Blob([text], { type });
    const url = URL.createObjectURL(blob);
    const a = h('a', { href: url, download: filename, hidden: true });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 30000);
    window.Rushes.lastExport = { filename, type, text };
  }

  function exportEdl() {
    const { usable, skipped } = exportClips();
    if (!usable.length) { showError(new ApiError(0, 'export', 'None of the selected clips has an fps in its asset record, so no timecode can be written.')); return; }
    const queries = [...new Set(usable.map((s) => s.query).filter(Boolean))];
    const title = `Rushes ${queries.length === 1 ? queries[0] : 'selection'}`;
    let text;
    try {
      text = toEdl(usable.map((s) => ({ asset_id: s.asset_id, start_ms: s.start_ms, end_ms: s.end_ms, fps: s.fps, clip_name: s.asset_id, comment: clipComment(s) })), { title });
    } catch (e) { showError(new ApiError(0, 'export', e.message)); return; }
    download(text, `rushes-${slug(queries.length === 1 ? queries[0] : 'selection')}-${stamp()}.edl`, 'text/plain;charset=utf-8');
    status(`EDL written: ${usable.length} event${usable.length === 1 ? '' : 's'}${skipped ? `; ${skipped} clip(s) without fps left out` : ''}.`);
  }

  function exportCsv() {
    const { usable, skipped } = exportClips();
    if (!usable.length) { showError(new ApiError(0, 'export', 'None of the selected clips has an fps in its asset record, so no timecode can be written.')); return; }
    const text = toCsv(usable.map((s) => ({ asset_id: s.asset_id, start_ms: s.start_ms, end_ms: s.end_ms, fps: s.fps, score: s.score,
      name: [s.code || s.asset_id, (s.labels || []).slice(0, 4).join(', ')].filter(Boolean).join(' '), comment: clipComment(s) })));
    const queries = [...new Set(usable.map((s) => s.query).filter(Boolean))];
    download(text, `rushes-${slug(queries.length === 1 ? queries[0] : 'selection')}-${stamp()}-markers.csv`, 'text/csv;charset=utf-8');
    status(`CSV markers written: ${usable.length} row${usable.length === 1 ? '' : 's'}${skipped ? `; ${skipped} clip(s) without fps left out` : ''}.`);
  }

  /* ---------- Completions (search as you type) -------------------------------------------- */

  const sugg = { timer: null, abort: null, items: [], active: -1, open: false, forText: null };

  function scheduleSuggest() {
    clearTimeout(sugg.timer);
    const text = $('#q').value;
    if (!text.trim()) { closeSuggest(); return; }
    sugg.timer = setTimeout(() => fetchSuggest(text), SUGGEST_DEBOUNCE_MS);
  }

  async function fetchSuggest(text) {
    if (sugg.abort) sugg.abort.abort();
    const abort = new AbortController();
    sugg.abort = abort;
    try {
      const data = await api('/v1/suggest?limit=8&q=' + encodeURIComponent(text), { signal: abort.signal });
      const moments = (data.moments || []).slice(0, 5);
      await loadRecords(moments.map((m) => m.asset_id), abort.signal);
      if (abort.signal.aborted || $('#q').value !== text || document.activeElement !== $('#q')) return;
      renderSuggest(data, text);
    } catch (e) {
      if (e.name === 'AbortError') return;
      if ($('#q').value !== text) return;
      renderSuggestError(e);
    }
  }

  function renderSuggest(data, text) {
    const list = $('#suggest-list');
    list.replaceChildren();
    sugg.items = [];
    sugg.active = -1;
    sugg.forText = text;
    // One entry per completed query: a label and a dialogue word may complete to the same text.
    const byQuery = new Map();
    for (const c of data.completions || []) {
      const cur = byQuery.get(c.query);
      if (cur) cur.also.push(c); else byQuery.set(c.query, { c, also: [] });
    }
    for (const { c, also } of byQuery.values()) {
      const kinds = [c, ...also].map((x) => (x.kind === 'label' ? (x.tracks || []).join(', ') || 'label' : `dialogue ${x.frequency}×`));
      const prefix = text.replace(/\S*$/, '');
      sugg.items.push({ type: 'completion', query: c.query });
      const idx = sugg.items.length - 1;
      list.append(h('li', { role: 'option', id: `sugg-${idx}`, class: 'sugg-item', 'aria-selected': 'false', dataset: { index: String(idx) } },
        h('span', { class: 'sugg-text' }, c.query.startsWith(prefix) && prefix ? [h('span', { class: 'muted' }, prefix), h('b', {}, c.query.slice(prefix.length))] : h('b', {}, c.query)),
        h('span', { class: 'sugg-kind' }, kinds.join(' · '))));
    }
    const moments = (data.moments || []).slice(0, 5);
    if (moments.length && sugg.items.length) {
      const best = sugg.items[0].query;
      list.append(h('li', { role: 'presentation', class: 'sugg-heading' }, `Top moments for “${best}”`));
      for (const m of moments) {
        const clip = (m.clips || [])[0];
        if (!clip) continue;
        const rec = record(m.asset_id);
        const fps = fpsInfo(rec.fps) ? rec.fps : null;
        const code = episodeCode({ season: m.season != null ? m.season : rec.season, episode: m.episode != null ? m.episode : rec.episode });
        sugg.items.push({ type: 'moment', query: best, asset_id: m.asset_id, start_ms: clip.start_ms });
        const idx = sugg.items.length - 1;
        list.append(h('li', { role: 'option', id: `sugg-${idx}`, class: 'sugg-item sugg-moment', 'aria-selected': 'false', dataset: { index: String(idx) } },
          h('span', { class: 'sugg-text' }, h('span', { class: 'ep-code' }, code || m.asset_id), ' ', m.title || rec.title || ''),
          h('span', { class: 'sugg-kind tc-in' }, tc(clip.start_ms, fps))));
      }
    }
    if (!sugg.items.length) {
      list.append(h('li', { role: 'presentation', class: 'sugg-empty muted' }, 'No completions. Press Enter to search.'));
    }
    openSuggest();
  }

  function renderSuggestError(e) {
    const list = $('#suggest-list');
    sugg.items = []; sugg.active = -1;
    list.replaceChildren(h('li', { role: 'presentation', class: 'sugg-empty error-inline' }, 'Completions unavailable: ', describeError(e)));
    openSuggest();
  }

  function openSuggest() {
    $('#suggest').hidden = false;
    $('#q').setAttribute('aria-expanded', 'true');
    sugg.open = true;
    setActive(-1);
  }

  function closeSuggest() {
    clearTimeout(sugg.timer);
    if (sugg.abort) sugg.abort.abort();
    $('#suggest').hidden = true;
    $('#q').setAttribute('aria-expanded', 'false');
    $('#q').removeAttribute('aria-activedescendant');
    sugg.open = false;
    sugg.active = -1;
  }

  function setActive(i) {
    sugg.active = i;
    for (const li of $$('#suggest-list .sugg-item')) {
      const on = Number(li.dataset.index) === i;
      li.setAttribute('aria-selected', String(on));
      li.classList.toggle('active', on);
      if (on) li.scrollIntoView({ block: 'nearest' });
    }
    if (i >= 0) $('#q').setAttribute('aria-activedescendant', `sugg-${i}`); else $('#q').removeAttribute('aria-activedescendant');
  }

  function pickSuggestion(i) {
    const item = sugg.items[i];
    if (!item) return;
    closeSuggest();
    $('#q').value = item.query;
    let s;
    try { s = stateFromForms(); } catch (e) { showError(new ApiError(0, 'invalid_input', e.message)); return; }
    navigate(s, { cursors: [], focusClip: item.type === 'moment' ? { asset_id: item.asset_id, start_ms: item.start_ms } : null });
  }

  /* ---------- Keyboard -------------------------------------------------------------------- */

  function focusClipElement(el) {
    if (!el) return;
    el.focus({ preventScroll: true });
    el.scrollIntoView({ block: 'nearest', behavior: 'smooth' });
  }

  function focusClipAt({ asset_id, start_ms }) {
    const clips = $$('#episodes .clip').filter((el) => el.dataset.asset === asset_id);
    if (!clips.length) return;
    const exact = clips.find((el) => Number(el.dataset.start) === start_ms);
    focusClipElement(exact || clips[0]);
  }

  function currentClip() { return document.activeElement && document.activeElement.closest ? document.activeElement.closest('.clip') : null; }

  function moveClip(delta) {
    const clips = $$('#episodes .clip');
    if (!clips.length) return;
    const cur = currentClip();
    const i = cur ? clips.indexOf(cur) : -1;
    const next = i < 0 ? (delta > 0 ? 0 : clips.length - 1) : Math.max(0, Math.min(clips.length - 1, i + delta));
    focusClipElement(clips[next]);
  }

  function isTyping(el) {
    if (!el) return false;
    const tag = el.tagName;
    if (tag === 'TEXTAREA' || tag === 'SELECT' || el.isContentEditable) return true;
    if (tag !== 'INPUT') return false;
    return !['checkbox', 'radio', 'button', 'submit', 'reset'].includes(el.type);
  }

  function onGlobalKey(ev) {
    if (ev.defaultPrevented || ev.ctrlKey || ev.metaKey || ev.altKey) return;
    if ($('#help').open) return;
    if (isTyping(ev.target)) return;
    const k = ev.key;
    const clip = currentClip();
    const act = (fn) => { ev.preventDefault(); fn(); };
    if (k === '/') return act(() => { $('#q').focus(); $('#q').select(); });
    if (k === '?') return act(() => openHelp());
    if (k === 'j' || k === 'ArrowDown' && clip) return act(() => moveClip(1));
    if (k === 'k' || k === 'ArrowUp' && clip) return act(() => moveClip(-1));
    if ((k === 'x' || (k === ' ' && ev.target === clip)) && clip) return act(() => { const cb = $('input.sel', clip); cb.click(); });
    if (k === 't' && clip) return act(() => $('.tracks-btn', clip).click());
    if (k === 'a' && !$('#select-all').disabled) return act(() => $('#select-all').click());
    if (k === 'e' && app.selection.size) return act(exportEdl);
    if (k === 'm' && app.selection.size) return act(exportCsv);
    if (k === 'n') return act(() => goPage(1));
    if (k === 'p') return act(() => goPage(-1));
    if (k === 'f') return act(() => $('#f-series').focus());
    if (k === 'Escape' && clip) {
      const btn = $('.tracks-btn', clip);
      if (btn.getAttribute('aria-expanded') === 'true') return act(() => btn.click());
    }
  }

  function openHelp() {
    const d = $('#help');
    if (!d.open) d.showModal();
  }

  /* ---------- Wiring ---------------------------------------------------------------------- */

  function init() {
    window.Rushes.app = app;
    loadSelection();
    renderKeyStatus();

    $('#search-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      if (sugg.open && sugg.active >= 0) { pickSuggestion(sugg.active); return; }
      submitForms();
    });
    const q = $('#q');
    q.addEventListener('input', scheduleSuggest);
    q.addEventListener('keydown', (ev) => {
      if (ev.key === 'ArrowDown' || ev.key === 'ArrowUp') {
        if (!sugg.open) { if (ev.key === 'ArrowDown' && q.value.trim()) { ev.preventDefault(); fetchSuggest(q.value); } return; }
        ev.preventDefault();
        const n = sugg.items.length;
        if (!n) return;
        const next = ev.key === 'ArrowDown' ? (sugg.active + 1) % (n + 1) : (sugg.active - 1 + n + 1) % (n + 1);
        setActive(next === n ? -1 : next);
      } else if (ev.key === 'Escape') {
        if (sugg.open) { ev.preventDefault(); closeSuggest(); }
      } else if (ev.key === 'Tab') {
        closeSuggest();
      }
    });
    q.addEventListener('blur', () => setTimeout(() => { if (document.activeElement !== q) closeSuggest(); }, 150));
    $('#suggest-list').addEventListener('mousedown', (ev) => {
      const li = ev.target.closest('.sugg-item');
      if (!li) return;
      ev.preventDefault();
      pickSuggestion(Number(li.dataset.index));
    });
    $('#suggest-list').addEventListener('mousemove', (ev) => {
      const li = ev.target.closest('.sugg-item');
      if (li && Number(li.dataset.index) !== sugg.active) setActive(Number(li.dataset.index));
    });

    $('#filter-form').addEventListener('submit', (ev) => { ev.preventDefault(); submitForms(); });
    for (const el of [...$$('input[name="mode"]'), $('#f-per'), $('#f-limit')]) el.addEventListener('change', () => { if ($('#q').value.trim()) submitForms(); });
    $('#filter-reset').addEventListener('click', () => {
      $('#f-series').value = ''; $('#f-season').value = ''; $('#f-episode').value = ''; $('#f-from').value = ''; $('#f-to').value = '';
      submitForms();
    });

    $('#select-all').addEventListener('change', (ev) => selectAllOnPage(ev.target.checked));
    $('#export-edl').addEventListener('click', exportEdl);
    $('#export-csv').addEventListener('click', exportCsv);
    $('#clear-selection').addEventListener('click', () => { app.selection.clear(); saveSelection(); updateSelectionUi(); status('Selection cleared.'); });

    $('#auth-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      const key = $('#auth-key').value.trim();
      if (!key) { $('#auth-key').focus(); return; }
      setKey(key);
      const had = !!app.keyWaiters;
      settleKeyWaiters(true);
      if (!had && app.lastAction) app.lastAction();
      $('#q').focus();
    });
    $('#auth-cancel').addEventListener('click', () => { settleKeyWaiters(false); $('#q').focus(); });

    $('#help-btn').addEventListener('click', openHelp);
    $('#help-close').addEventListener('click', () => $('#help').close());
    document.addEventListener('keydown', onGlobalKey);

    app.cursors = (history.state && history.state.cursors) || [];
    history.replaceState({ cursors: app.cursors, rushes: 1 }, '', location.pathname + encodeState(app.state));
    fillForms(app.state);
    updateSelectionUi();
    search(app.state);
  }

  window.Rushes = Object.assign({}, RushesPure, { version: 1 });
  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', init); else init();
})();

"""The search page in a real browser, against a `rushes demo` node serving it (no API key):
completions, did-you-mean, chips, results and timecodes checked against the API's own answer,
filters and paging in the URL, keyboard, the tracks panel, EDL and CSV exports checked line by
line, and no console error. Screenshots and exports go to $PAGE_OUT (target/browser).

Run by .ci/browser: PAGE_BASE=http://127.0.0.1:PORT /usr/bin/python3 node/tests/browser/test_page.py"""
import glob
import json
import os
import re
import urllib.parse

from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from browser import BASE, DOWNLOADS, OUT, Checks, api, expected_frames, expected_timecode, frames_timecode, js, logs, make_driver, problems, searches_done, wait
from browser import wait_results as settle

SHOTS = OUT
checks = Checks("page")
check = checks.check


def clips(d):
    return d.find_elements(By.CSS_SELECTOR, "#episodes .clip")


def wait_results(d, timeout=20):
    """After a navigation or an action that searches: until that search finished."""
    settle(d, after=wait_results.before, timeout=timeout)
    wait_results.before = searches_done(d)


wait_results.before = 0


def fresh(d, url):
    """Loads `url` (a new document: the search counter starts again) and waits for its search."""
    d.get(url)
    wait_results.before = 0
    wait_results(d)


def qs(d):
    return urllib.parse.parse_qs(urllib.parse.urlparse(d.current_url).query)


def main():
    for f in glob.glob(DOWNLOADS + "/*"):
        os.remove(f)
    d = make_driver()
    all_logs = []
    real_get = d.get

    def get(url):
        all_logs.extend(logs(d))
        real_get(url)
    d.get = get
    try:
        # 1. Empty page: intro, no errors.
        fresh(d, BASE + "/")
        check("intro shown without a query", d.find_elements(By.CSS_SELECTOR, ".intro"))
        d.save_screenshot(SHOTS + "/shot-intro.png")

        # 2. "/" focuses the search box; typing shows completions; arrows + Enter pick one.
        d.find_element(By.TAG_NAME, "body").send_keys("/")
        check("/ focuses the search box", js(d, "return document.activeElement.id") == "q")
        d.switch_to.active_element.send_keys("Jo")
        wait(d, lambda x: x.find_element(By.ID, "suggest").is_displayed() and len(x.find_elements(By.CSS_SELECTOR, "#suggest-list .sugg-item")) > 0, 10, "completions")
        items = [e.text for e in d.find_elements(By.CSS_SELECTOR, "#suggest-list .sugg-item")]
        check("typing shows completions", len(items) > 0, " | ".join(items[:8]))
        check("combobox aria-expanded", d.find_element(By.ID, "q").get_attribute("aria-expanded") == "true")
        d.save_screenshot(SHOTS + "/shot-suggest.png")
        q = d.find_element(By.ID, "q")
        q.send_keys(Keys.ARROW_DOWN)
        q.send_keys(Keys.ARROW_DOWN)
        active = d.find_element(By.CSS_SELECTOR, "#suggest-list .sugg-item.active").text
        check("arrow keys move the active completion", active != "", active)
        check("aria-activedescendant follows", q.get_attribute("aria-activedescendant") == "sugg-1")
        q.send_keys(Keys.ESCAPE)
        check("Escape closes completions", not d.find_element(By.ID, "suggest").is_displayed())
        q.send_keys(Keys.ARROW_DOWN)  # reopens
        wait(d, lambda x: x.find_element(By.ID, "suggest").is_displayed(), 5, "reopen")
        q.send_keys(Keys.ARROW_DOWN)
        picked = d.find_element(By.CSS_SELECTOR, "#suggest-list .sugg-item.active .sugg-text").text
        q.send_keys(Keys.ENTER)
        wait(d, lambda x: "q=" in x.current_url, 10, "url has q")
        wait_results(d)
        check("picking a completion searches it", qs(d).get("q", [""])[0] == picked, f"picked {picked!r}, url {d.current_url}")
        check("results shown after picking", len(clips(d)) > 0, f"{len(clips(d))} clips")

        # 3. Search with corrections: did you mean, chips.
        fresh(d, BASE + "/?q=" + urllib.parse.quote("Jooey in the kitchn season 1"))
        dym = d.find_element(By.CSS_SELECTOR, ".didyoumean").text
        check("did you mean shown", "Joey in the kitchen season 1" in dym, dym)
        chips = [c.text.replace("\n", " ") for c in d.find_elements(By.CSS_SELECTOR, "#understanding .chip")]
        check("chips from understanding", any("joey" in c.lower() for c in chips) and any("kitchen" in c.lower() for c in chips) and any("season 1" in c for c in chips), str(chips))
        eps = d.find_elements(By.CSS_SELECTOR, ".episode")
        check("results grouped per episode", len(eps) >= 1, f"{len(eps)} episodes")
        tcs = js(d, "return [...document.querySelectorAll('.clip .tc-in')].map(e => e.textContent)")
        check("clips carry SMPTE timecodes", tcs and all(re.fullmatch(r"\d\d:\d\d:\d\d:\d\d", t) for t in tcs), str(tcs[:4]))
        # Against the API's own answer to the same request, and the asset's fps from its record:
        # every episode shown, in order, each clip's in and out timecodes.
        answer = api("POST", "/v1/search", {"q": "Jooey in the kitchn season 1", "per_asset": 5, "limit": 20})
        expected = []
        for asset in answer["assets"]:
            fps = api("GET", "/v1/assets/" + urllib.parse.quote(asset["asset_id"]))["fps"]
            expected.append((asset["asset_id"], [(expected_timecode(c["start_ms"], fps), expected_timecode(c["end_ms"], fps)) for c in asset["clips"]]))
        shown = js(d, "return [...document.querySelectorAll('.episode')].map(e => [e.querySelector('.clip').dataset.asset, "
                      "[...e.querySelectorAll('.clip')].map(c => [c.querySelector('.tc-in').textContent, c.querySelector('.tc-out').textContent])])")
        shown = [(a, [tuple(p) for p in tcs]) for a, tcs in shown]
        check("episodes, clips and timecodes match the API's answer", shown == expected, f"shown {shown[:2]} expected {expected[:2]}")
        d.save_screenshot(SHOTS + "/shot-results.png")

        # did-you-mean link adopts the corrected text.
        d.find_element(By.CSS_SELECTOR, ".didyoumean a").click()
        wait_results(d)
        check("did-you-mean link searches the corrected text", qs(d)["q"][0] == "Joey in the kitchen season 1", d.current_url)
        check("no did-you-mean once corrected", not d.find_elements(By.CSS_SELECTOR, ".didyoumean"))

        # 4. Chip removal: remove the season chip -> q rewritten, season gone.
        before = len(d.find_elements(By.CSS_SELECTOR, "#understanding .chip"))
        btn = [b for b in d.find_elements(By.CSS_SELECTOR, "#understanding .chip-x") if "season" in b.get_attribute("aria-label")][0]
        btn.click()
        wait(d, lambda x: "season" not in x.current_url.lower().split("q=")[1] if "q=" in x.current_url else False, 10, "season removed")
        wait_results(d)
        chips2 = [c.text.replace("\n", " ") for c in d.find_elements(By.CSS_SELECTOR, "#understanding .chip")]
        check("removing a filter chip re-runs without it", not any("season" in c for c in chips2) and len(chips2) == before - 1, f"{chips2} url={d.current_url}")
        total_after = js(d, "return window.Rushes.app.response.total_assets")
        check("results widened after removing season", total_after >= 1, str(total_after))
        # remove the kitchen label chip
        btn = [b for b in d.find_elements(By.CSS_SELECTOR, "#understanding .chip-x") if "kitchen" in b.get_attribute("aria-label")][0]
        btn.click()
        wait(d, lambda x: "kitchen" not in urllib.parse.unquote_plus(x.current_url), 10, "kitchen removed")
        wait_results(d)
        chips3 = [c.text.replace("\n", " ") for c in d.find_elements(By.CSS_SELECTOR, "#understanding .chip")]
        check("removing a label chip re-runs without it", len(chips3) == 1 and "joey" in chips3[0].lower(), f"{chips3} q={qs(d).get('q')}")
        check("focus stays on the chips after removal", js(d, "return document.activeElement.classList.contains('chip-x') || document.activeElement.id === 'q'"))

        # 5. Back / forward.
        d.back()
        wait(d, lambda x: "kitchen" in urllib.parse.unquote_plus(x.current_url), 10, "back")
        wait_results(d)
        chipsb = [c.text for c in d.find_elements(By.CSS_SELECTOR, "#understanding .chip")]
        check("back restores the previous search", any("kitchen" in c for c in chipsb) and d.find_element(By.ID, "q").get_attribute("value") == qs(d)["q"][0], str(chipsb))
        d.forward()
        wait(d, lambda x: "kitchen" not in urllib.parse.unquote_plus(x.current_url), 10, "forward")
        wait_results(d)
        check("forward works", d.find_element(By.ID, "q").get_attribute("value") == qs(d)["q"][0], d.current_url)

        # 6. Filters, mode, per-episode, paging from the URL.
        fresh(d, BASE + "/?q=joey&mode=union&per=2&limit=2&season=1&from_ms=60000&to_ms=1200000")
        st = js(d, "return [document.getElementById('f-season').value, document.getElementById('f-from').value, document.getElementById('f-to').value, document.querySelector('input[name=mode]:checked').value, document.getElementById('f-per').value, document.getElementById('f-limit').value]")
        check("URL state fills the filter bar", st == ["1", "1:00", "20:00", "union", "2", "2"], str(st))
        per = js(d, "return window.Rushes.app.response.assets.map(a => a.clips.length)")
        check("per-episode limit respected", all(n <= 2 for n in per) and len(per) <= 2, str(per))
        inwin = js(d, "return window.Rushes.app.response.assets.every(a => a.clips.every(c => c.start_ms >= 60000 && c.end_ms <= 1200000))")
        check("time window applied", inwin)
        has_next = js(d, "return !!window.Rushes.app.response.next_cursor")
        check("paging offered", has_next and d.find_element(By.ID, "pager").is_displayed())
        page1 = js(d, "return window.Rushes.app.response.assets.map(a => a.asset_id)")
        d.find_element(By.TAG_NAME, "body").click()
        js(d, "document.activeElement.blur()")
        d.find_element(By.TAG_NAME, "body").send_keys("n")
        wait(d, lambda x: "cursor=" in x.current_url, 10, "page 2")
        wait_results(d)
        page2 = js(d, "return window.Rushes.app.response.assets.map(a => a.asset_id)")
        check("next page shows other episodes", page2 and not set(page1) & set(page2), f"{page1} / {page2}")
        check("page number in URL", qs(d).get("page") == ["2"], d.current_url)
        d.save_screenshot(SHOTS + "/shot-page2.png")
        # shared URL of page 2 reloads the same page
        url2 = d.current_url
        fresh(d, url2)
        check("reloading a page-2 URL shows page 2", js(d, "return window.Rushes.app.response.assets.map(a => a.asset_id)") == page2)
        d.find_element(By.TAG_NAME, "body").send_keys("p")
        wait(d, lambda x: "cursor=" not in x.current_url, 10, "page 1")
        wait_results(d)
        check("previous/first page", js(d, "return window.Rushes.app.response.assets.map(a => a.asset_id)") == page1)

        # filter bar typed by the user
        fresh(d, BASE + "/?q=Monica")
        f = d.find_element(By.ID, "f-episode")
        f.send_keys("2")
        f.send_keys(Keys.ENTER)
        wait(d, lambda x: "episode=2" in x.current_url, 10, "episode filter")
        wait_results(d)
        eps = js(d, "return window.Rushes.app.response.assets.map(a => a.episode)")
        check("episode filter from the filter bar", eps and all(e == 2 for e in eps), str(eps))
        chipsf = [c.text.replace("\n", " ") for c in d.find_elements(By.CSS_SELECTOR, "#understanding .chip")]
        check("explicit filter shows as a chip", any("episode 2" in c for c in chipsf), str(chipsf))
        bad = d.find_element(By.ID, "f-from")
        bad.send_keys("banana")
        bad.send_keys(Keys.ENTER)
        wait(d, lambda x: "not a time" in x.find_element(By.ID, "error").text, 10, "the bad time explained")
        err = d.find_element(By.ID, "error").text
        check("bad time input explained", "not a time" in err and bad.get_attribute("aria-invalid") == "true", err)
        bad.clear()

        # 7. Dialogue highlights.
        fresh(d, BASE + "/?q=" + urllib.parse.quote('"soap opera"'))
        marks = js(d, "return [...document.querySelectorAll('.ev-lines mark')].map(m => m.textContent.toLowerCase())")
        check("dialogue highlights from the API", marks and set(marks) <= {"soap", "opera"}, str(marks[:6]))
        fresh(d, BASE + "/?q=" + urllib.parse.quote("audition soap opera"))
        d.save_screenshot(SHOTS + "/shot-dialogue.png")

        # 8. Keyboard: j/k, x select, t tracks, a select all, export EDL + CSV.
        fresh(d, BASE + "/?q=" + urllib.parse.quote("Joey in the kitchen") + "&per=2")
        body = d.find_element(By.TAG_NAME, "body")
        js(d, "document.activeElement.blur()")
        body.send_keys("j")
        check("j focuses the first clip", js(d, "return document.activeElement.classList.contains('clip') && document.activeElement === document.querySelector('.clip')"))
        d.switch_to.active_element.send_keys("j")
        check("j moves to the next clip", js(d, "return document.activeElement === document.querySelectorAll('.clip')[1]"))
        d.switch_to.active_element.send_keys("k")
        check("k moves back", js(d, "return document.activeElement === document.querySelectorAll('.clip')[0]"))
        d.switch_to.active_element.send_keys("x")
        check("x selects the focused clip", js(d, "return document.querySelector('.clip input.sel').checked && window.Rushes.app.selection.size === 1"))
        d.switch_to.active_element.send_keys("t")
        wait(d, lambda x: js(x, "const p = document.querySelector('.clip .tracks-panel'); return !p.hidden && !!p.querySelector('.tp, .error-inline')"), 10, "tracks")
        lanes = js(d, "return [...document.querySelector('.clip .tracks-panel').querySelectorAll('.tp-lane .tp-name')].map(e => e.textContent).filter(Boolean)")
        check("t shows the fused tracks around the clip", len(lanes) >= 2, str(lanes))
        # The request window: clip +- 10 s
        d.save_screenshot(SHOTS + "/shot-tracks.png")
        js(d, "document.querySelector('.clip .tracks-panel').scrollIntoView({block: 'center'})")
        d.save_screenshot(SHOTS + "/shot-tracks2.png")
        d.switch_to.active_element.send_keys(Keys.ESCAPE)
        check("Escape closes the tracks", js(d, "return document.querySelector('.clip .tracks-panel').hidden"))
        js(d, "document.activeElement.blur()")
        body.send_keys("a")
        n_page = js(d, "return document.querySelectorAll('.clip').length")
        check("a selects every clip on the page", js(d, "return window.Rushes.app.selection.size") == n_page, f"{n_page}")
        check("select-all checkbox checked", d.find_element(By.ID, "select-all").is_selected())
        # export EDL via keyboard
        body.send_keys("e")
        wait(d, lambda x: js(x, "return !!(window.Rushes.lastExport && window.Rushes.lastExport.filename.endsWith('.edl'))"), 5, "edl")
        edl = js(d, "return window.Rushes.lastExport.text")
        fname = js(d, "return window.Rushes.lastExport.filename")
        open(SHOTS + "/export-sample.edl", "w").write(edl)
        # Check against the API: recompute from the selection.
        sel_all = js(d, "return [...window.Rushes.app.selection.values()]")
        sel = [x for x in sel_all if x.get("fps")]
        check("clips without fps are left out of exports and said so", len(sel_all) - len(sel) == 0 or "without fps left out" in d.find_element(By.ID, "status").get_attribute("textContent"), f"{len(sel_all)} selected, {len(sel)} with fps")
        lines = edl.split("\r\n")
        events = [l for l in lines if re.match(r"^\d{3}  ", l)]
        ok = lines[0].startswith("TITLE: ") and lines[1] == "FCM: NON-DROP FRAME" and len(events) == len(sel)
        # Record timecodes run end to end from 01:00:00:00 at the selection's most common base.
        bases = [max(1, round(x["fps"])) for x in sel]
        base = max(set(bases), key=bases.count) if bases else 24
        rec = base * 3600
        detail = []
        for i, (ev, s) in enumerate(zip(events, sel)):
            m = re.match(r"^(\d{3})  (.{8}) (V    ) (C       ) (\S+) (\S+) (\S+) (\S+)$", ev)
            if not m:
                ok = False; detail.append("bad line " + ev); continue
            num, reel, _, _, si, so, ri, ro = m.groups()
            exp_si, exp_so = expected_timecode(s["start_ms"], s["fps"]), expected_timecode(s["end_ms"], s["fps"])
            exp_ri = frames_timecode(rec, base)
            rec += expected_frames(s["end_ms"], s["fps"]) - expected_frames(s["start_ms"], s["fps"])
            exp_ro = frames_timecode(rec, base)
            if (int(num), si, so, ri, ro) != (i + 1, exp_si, exp_so, exp_ri, exp_ro) or not re.fullmatch(r"[A-Z0-9]{1,8} *", reel):
                ok = False; detail.append(f"{ev} expected {exp_si} {exp_so} {exp_ri} {exp_ro}")
        check("EDL content matches the selection", ok, "; ".join(detail) or f"{len(events)} events, {fname}")
        check("EDL has FROM CLIP NAME lines", sum(1 for l in lines if l.startswith("* FROM CLIP NAME: ")) == len(events))
        check("EDL first record in is 01:00:00:00", events and events[0].split()[-2] == "01:00:00:00")
        wait(d, lambda x: glob.glob(DOWNLOADS + "/*.edl"), 10, "the EDL download")
        files = glob.glob(DOWNLOADS + "/*.edl")
        check("EDL downloaded through a blob: URL under the CSP", files and open(files[0], newline="").read() == edl, str(files))
        body.send_keys("m")
        wait(d, lambda x: js(x, "return window.Rushes.lastExport.filename.endsWith('.csv')"), 5, "csv")
        csv_text = js(d, "return window.Rushes.lastExport.text")
        open(SHOTS + "/export-sample.csv", "w").write(csv_text)
        check("CSV header row", csv_text.split("\r\n")[0] == "Marker Name,Description,In,Out,Duration,Marker Type,Asset ID,FPS,Start ms,End ms,Score", csv_text.split("\r\n")[0])
        check("CSV one row per clip", len([l for l in csv_text.split("\r\n") if l]) == len(sel) + 1)
        wait(d, lambda x: glob.glob(DOWNLOADS + "/*.csv"), 10, "the CSV download")
        check("CSV downloaded", glob.glob(DOWNLOADS + "/*.csv"))
        d.save_screenshot(SHOTS + "/shot-selected.png")

        # 9. Selection survives reload (sessionStorage) and a new search.
        fresh(d, BASE + "/?q=Monica")
        cnt = d.find_element(By.ID, "selection-count").text
        check("selection kept across searches in the tab", str(len(sel_all)) in cnt, cnt)

        # 10. Moments in completions: picking one focuses that clip.
        fresh(d, BASE + "/")
        q = d.find_element(By.ID, "q")
        q.click()
        q.send_keys("coffee s")
        wait(d, lambda x: len(x.find_elements(By.CSS_SELECTOR, "#suggest-list .sugg-moment")) > 0, 10, "moments")
        moment = d.find_elements(By.CSS_SELECTOR, "#suggest-list .sugg-moment")[1]
        mtext = moment.text
        idx = int(moment.get_attribute("data-index"))
        for _ in range(idx + 1):
            q.send_keys(Keys.ARROW_DOWN)
        q.send_keys(Keys.ENTER)
        wait(d, lambda x: "q=" in x.current_url, 10)
        wait_results(d)
        wait(d, lambda x: js(x, "return !!(document.activeElement.closest && document.activeElement.closest('.clip'))"), 10, "the moment's clip focused")
        item = js(d, "return window.Rushes.app.response && document.activeElement.closest && document.activeElement.closest('.clip') ? document.activeElement.dataset.asset + ' ' + document.activeElement.querySelector('.tc-in').textContent : null")
        check("picking a top moment focuses its clip", item is not None and item.split()[1] in mtext, f"{mtext!r} -> {item!r}")

        # 11. Help dialog.
        js(d, "document.activeElement.blur()")
        d.find_element(By.TAG_NAME, "body").send_keys("?")
        check("? opens the shortcuts", js(d, "return document.getElementById('help').open"))
        d.save_screenshot(SHOTS + "/shot-help.png")
        d.switch_to.active_element.send_keys(Keys.ESCAPE)
        check("Escape closes the shortcuts", not js(d, "return document.getElementById('help').open"))

        # 12. Errors in plain words: a 422 from the API.
        fresh(d, BASE + "/?q=the")
        err = d.find_element(By.ID, "error").text
        check("API error message shown", "422" in err and "nothing to search for" in err, err)

        all_logs += logs(d)
    finally:
        d.quit()
    bad = [m for m in problems(all_logs) if "Failed to load resource" not in m]
    net = [m for m in problems(all_logs) if "Failed to load resource" in m]
    check("no console errors (CSP, JS)", not bad, json.dumps(bad[:5]))
    check("only the expected network error (the 422 test)", len(net) == 1 and "422" in net[0], json.dumps(net))
    print("\nconsole entries:", len(all_logs))
    for e in all_logs:
        print("  ", e.get("level"), e.get("message")[:200])
    checks.finish()


if __name__ == "__main__":
    main()

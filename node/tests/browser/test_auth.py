"""The search page against a node with API keys: a 401 asks for a key once (a form, not a
prompt), a wrong key is refused in plain words, the key is kept for the tab (sessionStorage)
and sent with every request of the page, forgetting it asks again, and cancelling shows the
401 in words.

Run by .ci/browser: PAGE_BASE=... PAGE_KEY=<a read key> /usr/bin/python3 node/tests/browser/test_auth.py"""
import json

from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from browser import BASE, KEY, OUT, Checks, js, logs, make_driver, problems, wait

checks = Checks("auth")
check = checks.check
assert KEY, "PAGE_KEY must hold a key with the read scope"

d = make_driver()
all_logs = []
try:
    d.get(BASE + "/?q=joey")
    wait(d, lambda x: x.find_element(By.ID, "auth-panel").is_displayed(), 10, "the key form")
    check("a 401 shows the key form", True, d.find_element(By.ID, "auth-message").text)
    check("the key input has the focus", js(d, "return document.activeElement.id") == "auth-key")
    d.save_screenshot(OUT + "/shot-auth.png")
    k = d.find_element(By.ID, "auth-key")
    k.send_keys("rk_wrong")
    k.send_keys(Keys.ENTER)
    wait(d, lambda x: "not accepted" in x.find_element(By.ID, "auth-message").text, 10, "the wrong key refused")
    check("a wrong key is refused in words", True, d.find_element(By.ID, "auth-message").text)
    k = d.find_element(By.ID, "auth-key")
    k.send_keys(KEY)
    k.send_keys(Keys.ENTER)
    wait(d, lambda x: len(x.find_elements(By.CSS_SELECTOR, ".clip")) > 0, 20, "results with the key")
    check("results with the key", True, f"{len(d.find_elements(By.CSS_SELECTOR, '.clip'))} clips")
    check("the key form is hidden", not d.find_element(By.ID, "auth-panel").is_displayed())
    check("the key is kept in sessionStorage", js(d, "return sessionStorage.getItem('rushes.apiKey')") == KEY)
    wait(d, lambda x: js(x, "return !document.body.classList.contains('busy')"), 20, "the search to settle")
    check("asset records fetched with the key (fps known)", js(d, "return [...window.Rushes.app.assets.values()].every(r => r.fps)"))
    d.refresh()
    wait(d, lambda x: len(x.find_elements(By.CSS_SELECTOR, ".clip")) > 0, 20, "results after a reload")
    check("a reload in the same tab needs no key again", not d.find_element(By.ID, "auth-panel").is_displayed())
    q = d.find_element(By.ID, "q")
    q.clear()
    q.send_keys("Mon")
    wait(d, lambda x: len(x.find_elements(By.CSS_SELECTOR, "#suggest-list .sugg-item")) > 0, 10, "completions")
    check("completions with the key", True)
    q.send_keys(Keys.ESCAPE)
    js(d, "document.activeElement.blur()")
    d.find_element(By.TAG_NAME, "body").send_keys("j")
    d.switch_to.active_element.send_keys("t")
    wait(d, lambda x: js(x, "return !!document.querySelector('.clip .tracks-panel .tp')"), 10, "the tracks panel")
    check("fused tracks (buckets) with the key", True)
    [b for b in d.find_elements(By.CSS_SELECTOR, "#key-status button") if "Forget" in b.text][0].click()
    check("Forget clears the stored key", js(d, "return sessionStorage.getItem('rushes.apiKey')") is None)
    d.find_element(By.ID, "q").clear()
    d.find_element(By.ID, "q").send_keys("Rachel" + Keys.ENTER)
    wait(d, lambda x: x.find_element(By.ID, "auth-panel").is_displayed(), 10, "the key form again")
    check("asks again after forgetting", True)
    d.find_element(By.ID, "auth-cancel").click()
    wait(d, lambda x: "401" in x.find_element(By.ID, "error").text, 10, "the 401 explained")
    err = d.find_element(By.ID, "error").text
    check("cancelling shows the 401 in words", "401" in err and "API key" in err, err)
    all_logs += logs(d)
finally:
    d.quit()
bad = [m for m in problems(all_logs) if "Failed to load resource" not in m]
check("no CSP or JavaScript error", not bad, json.dumps(bad[:5]))
checks.finish()

// The support console. Talks to /support/api/ with the session cookie and the page's CSRF token.
// Every value from the API is put into the page as text (textContent), never as HTML.
"use strict";

(function () {
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const initialCorp = document.querySelector('meta[name="initial-corp"]').content;
  let corpid = "";

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "text") node.textContent = String(value);
      else node.setAttribute(name, String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function show(id, visible = true) {
    document.getElementById(id).hidden = !visible;
  }

  function fmtTime(seconds) {
    if (!seconds) return "—";
    const d = new Date(seconds * 1000);
    const pad = (n) => String(n).padStart(2, "0");
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }

  function fmtDuration(seconds) {
    if (seconds === null || seconds === undefined) return "—";
    const m = Math.floor(seconds / 60);
    return m ? `${m} min ${seconds % 60} s` : `${seconds} s`;
  }

  async function api(path, options = {}) {
    const init = { credentials: "same-origin", headers: { Accept: "application/json" }, ...options };
    if (init.method && init.method !== "GET") {
      init.headers["X-CSRF-Token"] = csrf;
      if (init.body !== undefined) init.headers["Content-Type"] = "application/json";
    }
    const resp = await fetch("/support/api/" + path, init);
    let body = null;
    try { body = await resp.json(); } catch (e) { body = null; }
    if (resp.status === 401) { window.location.assign("/support"); }
    return { status: resp.status, body };
  }

  function errorText(body) {
    const err = body && body.error;
    if (!err) return "请求失败 request failed";
    const dt = err.dingtalk ? ` (errcode ${err.dingtalk.errcode})` : "";
    return `${err.message}${dt} — ${err.hint}`;
  }

  function globalError(text) {
    const p = document.getElementById("global-error");
    p.textContent = text || "";
    p.hidden = !text;
  }

  // -- corps ----------------------------------------------------------------------------------------
  async function loadCorps() {
    const { status, body } = await api("corps");
    const list = document.getElementById("corp-list");
    list.replaceChildren();
    if (status !== 200) { globalError(errorText(body)); return; }
    if (!body.corps.length) { list.append(el("li", { class: "muted", text: "没有已注册的企业 no corps registered" })); return; }
    for (const corp of body.corps) {
      const latest = corp.latest;
      const badge = latest ? el("span", { class: "badge outcome-" + latest.outcome, text: latest.outcome }) : el("span", { class: "badge", text: "—" });
      const link = el("a", { href: "?corp=" + encodeURIComponent(corp.corpid), "data-corpid": corp.corpid }, corp.corpid);
      link.addEventListener("click", (ev) => { ev.preventDefault(); selectCorp(corp.corpid); });
      const codes = latest && latest.errcodes.length ? el("span", { class: "muted", text: " " + latest.errcodes.map((e) => e.errcode).join(", ") }) : null;
      list.append(el("li", { class: "corp-item", id: "corp-" + corp.corpid }, link, " ", badge, codes));
    }
    const wanted = initialCorp || corpid || body.corps[0].corpid;
    if (wanted) selectCorp(wanted);
  }

  async function selectCorp(id) {
    corpid = id;
    for (const li of document.querySelectorAll(".corp-item")) li.classList.toggle("selected", li.id === "corp-" + id);
    history.replaceState(null, "", "?corp=" + encodeURIComponent(id));
    document.getElementById("sig-result").hidden = true;
    document.getElementById("selftest-results").replaceChildren();
    document.getElementById("refresh-result").hidden = true;
    document.getElementById("outcome-filter").value = "";
    await Promise.all([loadCorp(), loadTrace()]);
  }

  async function loadCorp() {
    const id = corpid;
    const { status, body } = await api("corps/" + encodeURIComponent(id));
    if (id !== corpid) return; // another corp was selected meanwhile
    if (status !== 200) { globalError(errorText(body)); return; }
    globalError("");
    document.getElementById("corp-id").textContent = body.corp.corpid;
    const facts = document.getElementById("corp-facts");
    facts.replaceChildren();
    const rows = [
      ["agentId", body.corp.agent_id],
      ["origins", body.corp.origins.join("  ")],
      ["sign_hash", body.corp.sign_hash],
      ["callback", body.corp.callback ? "yes (" + body.corp.callback_key + ")" : "no"],
      ["退避 backoff", Object.keys(body.backoff).length ? Object.entries(body.backoff).map(([k, v]) => `${k}: ${v} s`).join(", ") : "—"],
    ];
    for (const [k, v] of rows) facts.append(el("dt", { text: k }), el("dd", { text: v }));
    renderPipelines(body.pipelines);
    for (const id of ["corp-summary", "pipelines", "trace", "sigcheck", "selftest"]) show(id);
  }

  function renderPipelines(pipelines) {
    const tbody = document.getElementById("pipeline-rows");
    tbody.replaceChildren();
    for (const p of pipelines) {
      const failure = p.failure
        ? el("div", { class: "failure" }, el("strong", { text: "errcode " + p.failure.errcode }), " ", p.failure.hint)
        : "—";
      const backoff = Object.keys(p.backoff).length ? Object.entries(p.backoff).map(([k, v]) => `${k}: ${v} s`).join(", ") : "—";
      const button = el("button", { type: "button", class: "refresh", "data-pipeline": p.pipeline, id: "refresh-" + p.pipeline }, "强制刷新 Force refresh");
      button.addEventListener("click", () => refresh(p.pipeline));
      const cooldown = p.cooldown_left ? el("div", { class: "muted", text: `冷却中 cooldown ${p.cooldown_left} s` }) : null;
      tbody.append(el("tr", { id: "pipeline-" + p.pipeline },
        el("td", {}, el("strong", { text: p.pipeline }), el("div", { class: "muted", text: p.label })),
        el("td", { text: p.cached ? "是 yes" : "否 no" }),
        el("td", { text: fmtTime(p.fetched_at) }),
        el("td", { text: fmtDuration(p.expires_in) }),
        el("td", {}, p.fingerprint ? el("code", { text: p.fingerprint }) : "—"),
        el("td", {}, failure),
        el("td", { text: backoff }),
        el("td", {}, button, cooldown)));
    }
  }

  async function refresh(pipeline) {
    const out = document.getElementById("refresh-result");
    out.hidden = false;
    out.className = "result";
    out.textContent = "刷新中… refreshing " + pipeline;
    const { status, body } = await api(`corps/${encodeURIComponent(corpid)}/refresh/${pipeline}`, { method: "POST" });
    if (status === 200) {
      out.className = "result ok";
      out.textContent = `${pipeline}: 已刷新 ${body.message}`;
    } else if (status === 429 && body && body.error) {
      // The contract's envelope, code rate_limited: our own cooldown, not a failure.
      out.className = "result refused";
      out.textContent = `${pipeline}: 被拒绝（冷却中） refused (cooldown) — ${body.error.message}. ${body.error.hint}`;
    } else {
      out.className = "result bad";
      out.textContent = `${pipeline}: 刷新失败 ${errorText(body)}`;
    }
    await loadCorp();
    out.hidden = false;
  }

  // -- trace ----------------------------------------------------------------------------------------
  async function loadTrace() {
    const select = document.getElementById("outcome-filter");
    const outcome = select.value;
    const query = outcome ? "?outcome=" + encodeURIComponent(outcome) : "";
    const id = corpid;
    const { status, body } = await api(`corps/${encodeURIComponent(id)}/trace${query}`);
    if (id !== corpid) return;
    if (status !== 200) { globalError(errorText(body)); return; }
    const current = select.value;
    select.replaceChildren(el("option", { value: "", text: "全部 all" }));
    for (const o of body.outcomes) select.append(el("option", { value: o, text: o }));
    select.value = current;
    const tbody = document.getElementById("trace-rows");
    tbody.replaceChildren();
    if (!body.entries.length) {
      tbody.append(el("tr", {}, el("td", { colspan: 7, class: "muted", text: "没有记录 no entries" })));
    }
    for (const e of body.entries) {
      const codes = el("div", {});
      for (const c of e.errcodes) codes.append(el("div", { class: "errcode" }, el("strong", { text: c.errcode }), " ", c.hint));
      if (!e.errcodes.length && e.hint) codes.append(el("div", { text: e.hint }));
      if (!e.errcodes.length && !e.hint) codes.append("—");
      const detail = [];
      if (e.userid) detail.push("userid " + e.userid);
      if (e.unionid) detail.push("unionid " + e.unionid);
      if (e.url) detail.push(e.url);
      if (e.message) detail.push(e.message);
      if (e.ticket_refreshed) detail.push("ticket refreshed");
      if (e.kind === "junk") {
        // One entry per window for logins with unknown codes (and those refused for it), counted per address.
        const addresses = Object.entries(e.addresses || {}).map(([a, n]) => `${a} ×${n}`);
        if (e.other_addresses) addresses.push(`others ×${e.other_addresses}`);
        detail.push(`×${e.count} since ${fmtTime(e.first)} (${e.refused || 0} refused without asking DingTalk)`);
        detail.push(addresses.join(", "));
      }
      const rid = e.request_id
        ? el("a", { href: "/support/logs/" + encodeURIComponent(e.request_id), class: "request-id", title: "日志 log lines" }, el("code", { text: e.request_id }))
        : "—";
      tbody.append(el("tr", { class: "trace-row outcome-" + e.outcome },
        el("td", { text: fmtTime(e.time) }), el("td", { text: e.kind || "" }), el("td", { text: e.step || "" }),
        el("td", {}, el("span", { class: "badge outcome-" + e.outcome, text: e.outcome })),
        el("td", {}, codes), el("td", { class: "detail", text: detail.join(" · ") }), el("td", {}, rid)));
    }
  }

  // -- signature checker ----------------------------------------------------------------------------
  async function checkSignature(ev) {
    ev.preventDefault();
    const payload = {
      url: document.getElementById("sig-url").value,
      nonceStr: document.getElementById("sig-nonce").value,
      timeStamp: document.getElementById("sig-ts").value,
      signature: document.getElementById("sig-signature").value,
    };
    const { status, body } = await api(`corps/${encodeURIComponent(corpid)}/signature-check`, { method: "POST", body: JSON.stringify(payload) });
    const box = document.getElementById("sig-result");
    const verdict = document.getElementById("sig-verdict");
    const findings = document.getElementById("sig-findings");
    box.hidden = false;
    findings.replaceChildren();
    if (status !== 200) { verdict.className = "verdict bad"; verdict.textContent = errorText(body); return; }
    verdict.className = "verdict " + (body.match ? "ok" : "bad");
    verdict.dataset.verdict = body.verdict;
    verdict.textContent = (body.match ? "✔ 签名匹配 match — " : "✘ 签名不匹配 no match — ") + (body.message || body.verdict);
    for (const f of body.findings) {
      const li = el("li", { class: "finding " + f.status, "data-part": f.part }, el("strong", { text: `[${f.part}] ` }), f.detail);
      const pairs = [["given", f.given], ["normalized", f.normalized], ["signed", f.signed], ["expected", f.expected]];
      for (const [k, v] of pairs) if (v) li.append(el("div", { class: "pair" }, el("span", { class: "muted", text: k + ": " }), el("code", { text: v })));
      findings.append(li);
    }
  }

  // -- self-test ------------------------------------------------------------------------------------
  async function selfTest() {
    const out = document.getElementById("selftest-results");
    out.replaceChildren(el("li", { class: "muted", text: "运行中… running" }));
    const id = corpid;
    const { status, body } = await api(`corps/${encodeURIComponent(id)}/self-test`, { method: "POST" });
    if (id !== corpid) return;
    out.replaceChildren();
    if (status !== 200) { out.append(el("li", { class: status === 429 ? "refused" : "bad", text: errorText(body) })); return; }
    for (const r of body.results) {
      out.append(el("li", { class: "selftest " + (r.ok ? "ok" : "bad"), "data-pipeline": r.pipeline },
        el("strong", { text: `${r.pipeline} token: ${r.ok ? "OK" : "失败 failed"}` }),
        r.errcode ? ` (errcode ${r.errcode})` : "",
        r.fingerprint ? el("span", {}, " fp ", el("code", { text: r.fingerprint })) : "",
        el("div", { class: "diagnosis", text: r.diagnosis })));
    }
  }

  document.getElementById("outcome-filter").addEventListener("change", loadTrace);
  document.getElementById("sig-form").addEventListener("submit", checkSignature);
  document.getElementById("selftest-run").addEventListener("click", selfTest);
  loadCorps();
})();

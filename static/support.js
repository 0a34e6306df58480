// The support console. Talks to /support/api/ with the session cookie and the page's CSRF token.
// Every value from the API is put into the page as text (textContent), never as HTML.
"use strict";

(function () {
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const initialCorp = document.querySelector('meta[name="initial-corp"]').content;
  let corpid = "";
  const TOKEN_LINES = new Set(["corp", "channel"]);

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
    // With the UTC offset: support staff and the follower may be in different zones.
    const off = -d.getTimezoneOffset();
    const tz = `UTC${off >= 0 ? "+" : "-"}${pad(Math.floor(Math.abs(off) / 60))}:${pad(Math.abs(off) % 60)}`;
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())} ${tz}`;
  }

  const OUTCOMES = {
    linked: "已关联", not_linked: "未关联", code_invalid: "授权码无效", not_following: "未关注",
    upstream_error: "钉钉拒绝", upstream_unavailable: "钉钉不可用", config_error: "页面鉴权失败",
    missing: "链接缺参数", malformed: "链接格式错误", unknown_corp: "企业未接入", agent_mismatch: "应用 ID 不匹配",
    invalid_request: "参数错误", url_not_allowed: "域名未登记",
  };
  const outcomeText = (o) => (OUTCOMES[o] ? `${OUTCOMES[o]} (${o})` : o || "—");

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
    if (!err) return "请求失败";
    // The old API's answers carry an int errcode, api.dingtalk.com's (v1.0) a string code and an HTTP status.
    const d = err.dingtalk;
    const dt = d ? ` (errcode ${d.errcode !== undefined ? d.errcode : d.code}${d.status ? ", HTTP " + d.status : ""})` : "";
    const zh = { unauthorized: "管理员令牌错误或会话已过期", rate_limited: "操作太频繁，请稍后再试", invalid_request: "参数不正确", not_found: "未找到", unknown_corp: "企业未登记" }[err.code];
    return `${zh ? zh + "：" : ""}${err.message}${dt} — ${err.hint}`;
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
      const kind = el("span", { class: "muted kind", text: " " + corp.kind });
      list.append(el("li", { class: "corp-item", id: "corp-" + corp.corpid, "data-kind": corp.kind }, link, kind, " ", badge, codes));
    }
    const wanted = initialCorp || corpid || body.corps[0].corpid;
    if (wanted) selectCorp(wanted);
  }

  // -- signing keys and OpenID Connect clients (never secrets) ---------------------------------------
  async function loadIdentity() {
    const { status, body } = await api("identity");
    const keys = document.getElementById("key-rows");
    const clients = document.getElementById("client-rows");
    if (status !== 200) { keys.replaceChildren(el("tr", {}, el("td", { colspan: "3", text: errorText(body) }))); return; }
    keys.replaceChildren(...body.keys.map((k) => el("tr", { "data-kid": k.kid, class: k.current ? "current" : "retired" },
      el("td", {}, el("code", { text: k.kid })),
      el("td", { text: k.current ? "当前 current" : "上一把 previous (retired " + k.retired_at + ")" }),
      el("td", { text: k.published_until || "—" }))));
    if (!body.clients.length) {
      clients.replaceChildren(el("tr", {}, el("td", { colspan: "4", class: "muted", text: "没有已注册的客户端 no clients (flask client add)" })));
      return;
    }
    clients.replaceChildren(...body.clients.map((c) => el("tr", { "data-client": c.client_id },
      el("td", {}, el("code", { text: c.client_id })),
      el("td", { text: c.corpid + (c.corp_registered ? "" : " (未注册 not registered)") }),
      el("td", { text: c.type }),
      el("td", { text: c.redirect_uris.join("  ") }))));
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
    const c = body.corp;
    const via = body.map_via;
    const rows = [
      ["类型 kind", c.kind],
      ...(c.app_key ? [["appKey", c.app_key]] : []),
      ...(via ? [["map_via", `${via.corpid} (by ${c.map_by}) — ` + (via.usable ? "internal app registered" : via.registered ? `registered as ${via.kind || "unreadable"}, not internal: logins cannot map` : "not registered: logins cannot map")]] : []),
      ...(c.kind === "service-window" ? [["require_follow", c.require_follow ? "yes" : "no"]] : []),
      ["agentId", body.corp.agent_id],
      ["origins", body.corp.origins.join("  ")],
      ["sign_hash", body.corp.sign_hash],
      ["callback", body.corp.callback ? "yes (" + body.corp.callback_key + ")" : "no"],
      ["退避 backoff", Object.keys(body.backoff).length ? Object.entries(body.backoff).map(([k, v]) => `${k}: ${v} s`).join(", ") : "—"],
    ];
    for (const [k, v] of rows) facts.append(el("dt", { text: k }), el("dd", { text: v, "data-fact": k }));
    document.getElementById("corp-kind").textContent = c.kind;
    renderPipelines(body.pipelines);
    for (const id of ["corp-summary", "pipelines", "trace", "sigcheck", "selftest"]) show(id);
  }

  function renderPipelines(pipelines) {
    const tbody = document.getElementById("pipeline-rows");
    tbody.replaceChildren();
    for (const p of pipelines) {
      const failure = p.failure
        ? el("div", { class: "failure" }, el("strong", { text: "errcode " + p.failure.errcode }), " ", p.failure.hint,
            p.failure.dingtalk ? el("div", { class: "muted", text: "钉钉 DingTalk: " + p.failure.dingtalk }) : null)
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
    for (const o of body.outcomes) select.append(el("option", { value: o, text: outcomeText(o) }));
    const searchSelect = document.getElementById("search-outcome");
    if (searchSelect.options.length <= 1) for (const o of body.outcomes) searchSelect.append(el("option", { value: o, text: outcomeText(o) }));
    select.value = current;
    const tbody = document.getElementById("trace-rows");
    tbody.replaceChildren();
    if (!body.entries.length) {
      tbody.append(el("tr", {}, el("td", { colspan: 7, class: "muted", text: "没有记录 no entries" })));
    }
    for (const e of body.entries) {
      const codes = el("div", {});
      for (const c of e.errcodes) {
        codes.append(el("div", { class: "errcode" }, el("strong", { text: c.errcode }), " ", c.hint,
          c.dingtalk ? el("div", { class: "muted", text: "钉钉原文：" + c.dingtalk }) : null));
      }
      if (!e.errcodes.length && e.hint) codes.append(el("div", { text: e.hint }));
      if (!e.errcodes.length && !e.hint) codes.append("—");
      const detail = [];
      if (e.userid) detail.push("userid " + e.userid);
      if (e.unionid) detail.push("unionid " + e.unionid);
      if (e.follower_id) detail.push("follower_id " + e.follower_id);
      if (e.url) detail.push(e.url);
      if (e.message) detail.push(e.message);
      if (e.ticket_refreshed) detail.push("已刷新 ticket");
      if (e.kind === "junk") {
        // One entry per window for logins with unknown codes (and those refused for it), counted per address.
        const addresses = Object.entries(e.addresses || {}).map(([a, n]) => `${a} ×${n}`);
        if (e.other_addresses) addresses.push(`其他 ×${e.other_addresses}`);
        detail.push(`自 ${fmtTime(e.first)} 起 ×${e.count}（其中 ${e.refused || 0} 次未询问钉钉即被拒绝）`);
        detail.push(addresses.join(", "));
      }
      const rid = el("div", {},
        e.reference ? el("div", { class: "reference", text: e.reference }) : null,
        e.request_id
          ? el("a", { href: "/support/logs/" + encodeURIComponent(e.request_id), class: "request-id", title: "日志" }, el("code", { text: e.request_id }))
          : "—",
        checkButton(e, corpid));
      tbody.append(el("tr", { class: "trace-row outcome-" + e.outcome },
        el("td", { text: fmtTime(e.time) }), el("td", { text: (e.kind || "") + (e.app_kind ? " · " + e.app_kind : "") }),
        el("td", { text: e.step || "" }),
        el("td", {}, el("span", { class: "badge outcome-" + e.outcome, text: outcomeText(e.outcome) })),
        el("td", {}, codes), el("td", { class: "detail", text: detail.join(" · ") }), el("td", {}, rid)));
    }
  }

  // -- signature checker ----------------------------------------------------------------------------
  const VERDICTS = {
    match: "一致", url: "URL 不一致", host: "主机名不一致", port: "端口不一致", ticket: "ticket 代数不一致",
    algorithm: "哈希算法不一致", corp: "企业 ID 不一致", agent: "应用 ID 不一致", no_ticket: "没有可比对的 ticket",
  };
  const SIG_INPUTS = { url: "sig-url", nonceStr: "sig-nonce", timeStamp: "sig-ts", signature: "sig-signature", signedUrl: "sig-signed", corpId: "sig-corp", agentId: "sig-agent" };

  /** A "签名检查" button for an entry with the page's dd.config report: opens the checker prefilled and runs it. */
  function checkButton(entry, entryCorp) {
    if (!entry.check || !entry.check.signature) return null;
    const button = el("button", { type: "button", class: "check-entry refresh", "data-reference": entry.reference || "" }, "签名检查");
    button.addEventListener("click", async () => {
      if (entryCorp !== corpid) await selectCorp(entryCorp);
      for (const [name, id] of Object.entries(SIG_INPUTS)) document.getElementById(id).value = entry.check[name] || "";
      document.getElementById("sigcheck").scrollIntoView();
      document.getElementById("sig-form").requestSubmit();
    });
    return button;
  }

  // -- search ---------------------------------------------------------------------------------------
  async function search(ev) {
    ev.preventDefault();
    const params = new URLSearchParams();
    const q = document.getElementById("search-q").value.trim();
    if (q) params.set("q", q);
    const outcome = document.getElementById("search-outcome").value;
    if (outcome) params.set("outcome", outcome);
    for (const name of ["since", "until"]) {
      const v = document.getElementById("search-" + name).value;
      if (v) params.set(name, String(new Date(v).getTime() / 1000));
    }
    const out = document.getElementById("search-results");
    const { status, body } = await api("trace?" + params.toString());
    out.replaceChildren();
    if (status !== 200) { out.append(el("p", { class: "error", text: errorText(body) })); return; }
    if (!body.entries.length) { out.append(el("p", { class: "muted", text: "没有找到记录" })); return; }
    for (const e of body.entries) {
      const codes = e.errcodes.map((c) => el("div", {}, el("strong", { text: c.errcode }), " ", c.hint,
        c.dingtalk ? el("div", { class: "muted", text: "钉钉原文：" + c.dingtalk }) : null));
      const link = el("a", { href: "?corp=" + encodeURIComponent(e.corpid || "") }, el("code", { text: e.corpid || "-" }));
      link.addEventListener("click", (ev2) => { ev2.preventDefault(); if (e.corpid) selectCorp(e.corpid); });
      out.append(el("div", { class: "entry search-hit", "data-reference": e.reference || "" },
        el("div", {}, el("span", { class: "reference", text: e.reference || "" }), " · ", fmtTime(e.time), " · 企业 ", link),
        el("div", {}, el("span", { class: "badge outcome-" + e.outcome, text: outcomeText(e.outcome) }), " ", [e.kind, e.step].filter(Boolean).join(" · ")),
        ...codes,
        e.url ? el("div", { class: "entry-url muted", text: e.url }) : null,
        e.userid || e.unionid ? el("div", { class: "muted", text: ["userid " + (e.userid || "—"), e.unionid ? "unionid " + e.unionid : ""].join(" ") }) : null,
        checkButton(e, e.corpid)));
    }
  }

  async function checkSignature(ev) {
    ev.preventDefault();
    const payload = {};
    for (const [name, id] of Object.entries(SIG_INPUTS)) payload[name] = document.getElementById(id).value;
    const { status, body } = await api(`corps/${encodeURIComponent(corpid)}/signature-check`, { method: "POST", body: JSON.stringify(payload) });
    const box = document.getElementById("sig-result");
    const verdict = document.getElementById("sig-verdict");
    const findings = document.getElementById("sig-findings");
    box.hidden = false;
    findings.replaceChildren();
    if (status !== 200) { verdict.className = "verdict bad"; verdict.textContent = errorText(body); return; }
    verdict.className = "verdict " + (body.match ? "ok" : "bad");
    verdict.dataset.verdict = body.verdict;
    verdict.textContent = (body.match ? "✔ 签名匹配" : "✘ 签名不匹配：" + (VERDICTS[body.verdict] || body.verdict));
    const summary = document.getElementById("sig-summary");
    summary.textContent = body.summary || "";
    summary.dataset.verdict = body.verdict;
    findings.append(el("li", { class: "muted", text: body.message || "" }));
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
      // Kind channel's lines are its two tokens; a current kind's are named checks (app, ticket, org, …).
      const name = TOKEN_LINES.has(r.pipeline) ? `${r.pipeline} token` : r.pipeline;
      const verdict = r.skipped ? "跳过 skipped" : r.ok ? "OK" : "失败 failed";
      out.append(el("li", { class: "selftest " + (r.skipped ? "skip" : r.ok ? "ok" : "bad"), "data-pipeline": r.pipeline },
        el("strong", { text: `${name}: ${verdict}` }),
        r.errcode ? ` (errcode ${r.errcode})` : "",
        r.fingerprint ? el("span", {}, " fp ", el("code", { text: r.fingerprint })) : "",
        el("div", { class: "diagnosis", text: r.diagnosis })));
    }
  }

  document.getElementById("outcome-filter").addEventListener("change", loadTrace);
  document.getElementById("search-form").addEventListener("submit", search);
  document.getElementById("tz").textContent = Intl.DateTimeFormat().resolvedOptions().timeZone + " " + fmtTime(Date.now() / 1000).split(" ")[2];
  document.getElementById("sig-form").addEventListener("submit", checkSignature);
  document.getElementById("selftest-run").addEventListener("click", selfTest);
  loadCorps();
  loadIdentity();
})();

/*
 * The sign-in page (templates/channel_login.html), for the corp's kind of login app (data-kind).
 *
 * Legacy service window (kind channel): GET /channel/config for this page's URL -> dd.config({type: 1}) ->
 * dd.ready -> dd.channel.permission.requestAuthCode -> POST /channel/login. dd.error is reported to
 * /channel/config/error before the page explains it.
 * Current apps (kinds internal and service-window, dingtalk-oapi.md §7.3): dd.requestAuthCode({corpId,
 * clientId}), which needs no dd.config, or on clients older than 7.0.45 dd.runtime.permission.requestAuthCode
 * ({corpId}) -> POST /channel/login; a service window that admits followers only may answer not_following.
 * Then the success view, or the corp's landing URL with the session token in the fragment. Opened by the
 * OpenID Connect provider (`oauth=HANDLE` in the URL), the page sends the handle with the login and goes where
 * the answer's `redirect` says (the client's redirect URI with its code), for every kind. `dd` is the
 * vendored DingTalk JSAPI, or static/sandbox-dd.js in sandbox mode: this file does not know which.
 *
 * The auth code and the session token are never written to the page, to storage or to the log.
 */
(function () {
  "use strict";

  var READY_TIMEOUT_MS = 20000;
  var JSAPI_LIST = ["channel.permission.requestAuthCode"];

  // dd.config errors (dingtalk-oapi.md §4): a title and the likely cause, for the person holding the phone.
  var CONFIG_ERRORS = {
    52010: ["企业 ID 不正确", "页面签名使用的企业 ID（corpId）与钉钉中的企业不一致。请联系企业管理员检查网关登记的企业 ID。"],
    52011: ["签名凭证读取失败", "签名所用的 jsapi_ticket 不属于该企业，或已经过期。"],
    52012: ["签名生成失败", "钉钉未能根据页面参数生成签名，请稍后重试。"],
    52013: ["签名校验失败", "页面地址与签名地址不一致、签名凭证（ticket）已过期，或签名算法与企业设置不符。"],
    52014: ["页面地址不正确", "签名中的页面地址（url）无效。请从服务窗菜单重新打开此页面。"],
    52015: ["随机串不正确", "签名参数 nonceStr 无效，请重试。"],
    52016: ["签名参数不正确", "签名参数不完整或格式不正确，请重试。"],
    52017: ["接口列表不正确", "页面申请的钉钉接口列表（jsApiList）无效。"],
    52018: ["时间戳不正确", "签名时间戳（timeStamp）无效或已过期，请重试。"],
    52019: ["应用 ID 不正确", "服务窗签名凭证须由企业 ID 与服务窗密钥（channelSecret）生成，且 type 必须为 1。请联系企业管理员检查网关中的应用 ID 与服务窗密钥。"]
  };
  var TICKET_ERRORS = { 52011: true, 52013: true };

  // The gateway's error codes (gateway contract), in the words of this page.
  var GATEWAY_ERRORS = {
    invalid_request: ["链接参数不正确", "登录链接中的参数不完整或格式不正确，请从服务窗菜单重新打开。"],
    unknown_corp: ["该企业尚未接入", "该企业还没有在登录网关登记，请联系企业管理员。"],
    agent_mismatch: ["应用 ID 不匹配", "链接中的应用 ID 与企业登记的服务窗应用不一致，请联系企业管理员。"],
    url_not_allowed: ["页面地址未登记", "当前页面地址不在企业登记的可信域名中，请联系企业管理员在网关中登记该域名。"],
    code_invalid: ["授权码无效", "钉钉授权码已失效或已被使用，重新获取后仍未成功。请重试。"],
    upstream_error: ["钉钉拒绝了请求", "网关调用钉钉接口被拒绝（密钥、IP 白名单或接口权限配置有误），请联系企业管理员。"],
    upstream_unavailable: ["钉钉暂时不可用", "钉钉服务暂时无法访问或繁忙，请稍后重试。"],
    not_following: ["请先关注服务窗", "该服务窗只允许关注者登录，请先在钉钉中关注该企业的服务窗。"]
  };

  var app = document.getElementById("app");
  var statusLine = document.getElementById("status");
  if (!app || !statusLine) {
    return; // the server rendered a problem page: nothing to run
  }
  var corpid = app.getAttribute("data-corpid") || "";
  var agentid = app.getAttribute("data-agentid") || "";
  var landingUrl = app.getAttribute("data-landing-url") || "";
  var kind = app.getAttribute("data-kind") || "channel";
  var clientId = app.getAttribute("data-client-id") || "";
  // The current-generation kinds sign in with the app's own auth code and no dd.config (§7.3).
  var current = kind === "internal" || kind === "service-window";
  var oauth = new URLSearchParams(location.search).get("oauth") || ""; // OpenID Connect: the pending sign-in

  function $(id) {
    return document.getElementById(id);
  }

  function pageUrl() {
    return location.href.split("#")[0];
  }

  // ---- views ------------------------------------------------------------------------------------

  var VIEWS = ["view-busy", "view-success", "view-error", "view-outside", "view-not-following"];

  function show(state, viewId, status, focusId) {
    app.setAttribute("data-state", state);
    VIEWS.forEach(function (id) {
      var el = $(id);
      if (el) {
        el.hidden = id !== viewId;
      }
    });
    // A card that says what happened has its own title: the status line does not repeat it.
    statusLine.textContent = status || "";
    statusLine.hidden = !status;
    if (focusId) {
      $(focusId).focus();
    }
  }

  function busy(state, status) {
    show(state, "view-busy", status);
  }

  function showOutside() {
    show("outside", "view-outside", "", "outside-title");
  }

  /** Who the person is in the corp, in this kind's terms (a service window's people come in as followers). */
  function identity(result) {
    var member = result.contact_type === 1 ? "外部联系人" : "员工";
    if (kind === "internal") {
      return "员工";
    }
    return kind === "service-window" ? member + "（服务窗关注者）" : member;
  }

  function showSignedIn(result) {
    $("success-linked").hidden = !result.linked;
    $("success-unlinked").hidden = !!result.linked;
    if ($("success-follower")) {
      $("success-follower").textContent = String(result.follower_id || "");
    }
    if (result.linked) {
      $("success-userid").textContent = String(result.userid);
      $("success-kind").textContent = identity(result);
      if ($("success-as")) {
        // Kind channel: an external contact is not a member of the corp.
        $("success-as").textContent = result.contact_type === 1 ? "你已登录为企业的外部联系人：" : "你已登录为企业员工：";
      }
      $("success-title").textContent = "登录成功";
      show("signed-in", "view-success", "", "success-title");
    } else if (kind === "service-window") {
      $("success-title").textContent = "已验证关注者身份";
      show("not-linked", "view-success", "", "success-title");
    } else {
      $("success-title").textContent = "已验证钉钉身份";
      show("not-linked", "view-success", "", "success-title");
    }
  }

  function showNotFollowing(err) {
    if (!$("view-not-following")) {
      showGatewayError(err);
      return;
    }
    app.setAttribute("data-error", "not_following");
    show("not-following", "view-not-following", "", "not-following-title");
  }

  /**
   * Show a failure; `tech` is what an administrator needs (codes, request id), never a secret; `reference` the
   * short code support finds the attempt by, shown outside the folded technical details.
   */
  function showError(kind, title, cause, tech, followup, reference) {
    $("error-reference").textContent = reference || "";
    $("error-reference-line").hidden = !reference;
    $("error-title").textContent = title;
    $("error-cause").textContent = cause;
    $("error-followup").textContent = followup || "";
    $("error-followup").hidden = !followup;
    $("error-tech").textContent = tech.filter(Boolean).join(" · ");
    app.setAttribute("data-error", kind);
    // A used or expired sign-in request (oauth) cannot succeed on a reload of the same link: only the application
    // that started it can start a new one, so no retry button is offered there.
    $("retry").hidden = kind === "oauth";
    show("error", "view-error", "", "error-title");
  }

  function showGatewayError(err) {
    var known = GATEWAY_ERRORS[err.code] || ["登录失败", "网关返回了错误，请稍后重试。"];
    showError(err.code || "gateway", known[0], known[1], [
      err.code && "错误码 " + err.code,
      err.errcode && "钉钉 errcode " + err.errcode,
      err.requestId && "请求 ID " + err.requestId
    ], "", err.reference);
  }

  function showNetworkError() {
    showError("network", "网络连接失败", "无法连接登录网关，请检查网络后重试。", ["network"]);
  }

  // ---- the gateway ------------------------------------------------------------------------------

  function GatewayError(status, body, retryAfter) {
    var e = (body && body.error) || {};
    this.status = status;
    this.retryAfter = retryAfter || 0; // seconds, from the Retry-After header (503 upstream_unavailable, 429)
    this.code = e.code || "http_" + status;
    this.errcode = e.dingtalk && e.dingtalk.errcode;
    this.requestId = e.request_id;
    this.reference = e.reference;
  }

  function NetworkError() {}

  function call(method, path, body) {
    var init = { method: method, credentials: "same-origin", headers: { Accept: "application/json" } };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    return fetch(path, init).then(
      function (resp) {
        return resp.json().then(
          function (data) {
            if (!resp.ok) {
              throw new GatewayError(resp.status, data, parseInt(resp.headers.get("Retry-After") || "", 10));
            }
            return data;
          },
          function () {
            throw new GatewayError(resp.status, null);
          }
        );
      },
      function () {
        throw new NetworkError();
      }
    );
  }

  function fetchConfig() {
    var query = "corpid=" + encodeURIComponent(corpid) + "&agentid=" + encodeURIComponent(agentid) +
      "&url=" + encodeURIComponent(pageUrl());
    return call("GET", "/channel/config?" + query);
  }

  /**
   * Report a failure the gateway cannot see (dd.error, dd.ready timing out, requestAuthCode failing) with what
   * DingTalk checked: the dd.config values (nothing secret) and the URL the gateway signed. The answer carries
   * the reference code the page shows.
   */
  function reportConfigError(code, message, stage) {
    var body = {
      corpid: corpid,
      agentid: agentid,
      url: pageUrl(),
      errorCode: code,
      errorMessage: message.slice(0, 1000),
      stage: stage || "dd.config"
    };
    if (signed) {
      body.signedUrl = signed.url;
      body.nonceStr = signed.nonceStr;
      body.timeStamp = signed.timeStamp;
      body.signature = signed.signature;
      body.corpId = signed.corpId;
      body.agentId = signed.agentId;
      body.type = 1;
    }
    return call("POST", "/channel/config/error", body).catch(function () {
      return null; // the explanation matters more than the report
    });
  }

  // ---- DingTalk ---------------------------------------------------------------------------------

  function inDingTalk() {
    var env = window.dd && window.dd.env;
    if (env && env.platform && env.platform !== "notInDingTalk") {
      return true;
    }
    return /DingTalk/i.test(navigator.userAgent || "");
  }

  /** dd.error and requestAuthCode failures come as {errorCode, errorMessage} (or message, or a string). */
  function describe(err) {
    var code = err && (err.errorCode !== undefined ? err.errorCode : err.code);
    var message = err && (err.errorMessage || err.message);
    if (typeof err === "string") {
      message = err;
    }
    var number = parseInt(code, 10);
    return { code: isNaN(number) ? 0 : number, message: message ? String(message) : "" };
  }

  /**
   * The container's way to ask for this kind's auth code, as a function of the callbacks, or null if it has
   * none: the legacy window's channel code; for current apps dd.requestAuthCode with the app's clientId, else
   * the archived dd.runtime.permission.requestAuthCode, which takes the corpId only (the container knows the app).
   */
  function codeRequester(corpId) {
    var dd = window.dd || {};
    if (!current) {
      var channel = dd.channel && dd.channel.permission;
      return channel && typeof channel.requestAuthCode === "function"
        ? function (callbacks) {
          return channel.requestAuthCode(Object.assign({ corpId: corpId }, callbacks));
        }
        : null;
    }
    if (typeof dd.requestAuthCode === "function") {
      return function (callbacks) {
        return dd.requestAuthCode(Object.assign({ corpId: corpId, clientId: clientId }, callbacks));
      };
    }
    var runtime = dd.runtime && dd.runtime.permission;
    if (runtime && typeof runtime.requestAuthCode === "function") {
      return function (callbacks) {
        return runtime.requestAuthCode(Object.assign({ corpId: corpId }, callbacks));
      };
    }
    return null;
  }

  // dd.requestAuthCode's name in dingtalk-jsapi's own table of minimum client versions (7.0.45 on mobile).
  var CLIENT_ID_AUTH_API = "runtime.permission.requestAuthCodeV2";

  /**
   * A promise of codeRequester's choice, corrected by the client: the bundled dd.requestAuthCode is always a
   * function, so on a client older than it supports (dd.checkJsApi, from the SDK's own version table, says
   * false) use the archived dd.runtime.permission.requestAuthCode instead.
   */
  function chooseRequester(corpId) {
    var dd = window.dd || {};
    var preferred = codeRequester(corpId);
    var runtime = dd.runtime && dd.runtime.permission;
    var older = runtime && typeof runtime.requestAuthCode === "function"
      ? function (callbacks) {
        return runtime.requestAuthCode(Object.assign({ corpId: corpId }, callbacks));
      }
      : null;
    if (!current || typeof dd.requestAuthCode !== "function" || typeof dd.checkJsApi !== "function" || !older) {
      return Promise.resolve(preferred);
    }
    return Promise.resolve(dd.checkJsApi({ jsApiList: [CLIENT_ID_AUTH_API] })).then(
      function (supported) {
        return supported && supported[CLIENT_ID_AUTH_API] === false ? older : preferred;
      },
      function () {
        return preferred;
      }
    );
  }

  function requestCode(corpId) {
    return chooseRequester(corpId).then(function (requester) {
      return askFor(requester);
    });
  }

  function askFor(requester) {
    return new Promise(function (resolve, reject) {
      if (!requester) {
        reject({ errorCode: -1, errorMessage: "requestAuthCode unavailable" });
        return;
      }
      var pending = requester({
        onSuccess: function (info) {
          resolve(info && info.code);
        },
        onFail: reject
      });
      // The vendored JSAPI also returns a promise; settle from whichever answers first.
      if (pending && typeof pending.then === "function") {
        pending.then(function (info) {
          resolve(info && info.code);
        }, reject);
      }
    });
  }

  var signed = null; // the dd.config this page passed (reported with a dd.error)

  function configure(config) {
    signed = config;
    return new Promise(function (resolve, reject) {
      var timer = setTimeout(function () {
        reject({ errorCode: -1, errorMessage: "dd.ready timeout", timeout: true });
      }, READY_TIMEOUT_MS);
      // dd.config first: the JSAPI treats a dd.ready registered before any dd.config as "no config
      // needed" and fires it without waiting for the signature check.
      window.dd.config({
        agentId: config.agentId,
        corpId: config.corpId,
        timeStamp: config.timeStamp,
        nonceStr: config.nonceStr,
        signature: config.signature,
        type: 1,
        jsApiList: JSAPI_LIST
      });
      window.dd.error(function (err) {
        clearTimeout(timer);
        reject(err || {});
      });
      window.dd.ready(function () {
        clearTimeout(timer);
        resolve();
      });
    });
  }

  function onConfigError(err) {
    if (err && err.timeout) {
      reportConfigError(-1, "dd.ready timeout", "dd.ready").then(function (report) {
        showError("ready_timeout", "钉钉未响应", "钉钉客户端没有完成页面鉴权，请确认钉钉已更新到最新版本后重试。",
          ["dd.ready timeout"], "", report && report.reference);
      });
      return;
    }
    var e = describe(err);
    busy("reporting", "页面鉴权失败，正在记录…");
    reportConfigError(e.code, e.message || "dd.error").then(function (report) {
      var known = CONFIG_ERRORS[e.code] || ["页面鉴权失败", "钉钉拒绝了此页面的签名，请稍后重试；如果问题持续，请联系企业管理员。"];
      var followup = "";
      if (TICKET_ERRORS[e.code]) {
        followup = report && report.ticket_refreshed
          ? "网关已更新签名凭证，点击“重试”通常即可恢复。"
          : "请先点击“重试”；如果问题持续，请联系企业管理员核对服务窗菜单中的页面地址。";
      }
      showError("config", known[0] + "（" + e.code + "）", known[1], [
        "dd.error " + e.code,
        e.message,
        report ? "已报告网关" : "未能报告网关"
      ], followup, report && report.reference);
    });
  }

  function onAuthCodeError(err) {
    var e = describe(err);
    var cause = kind === "internal"
      ? "钉钉没有返回授权码。请确认你是该企业的成员、已获授权使用此应用，然后重试。"
      : "钉钉没有返回授权码。请确认你已关注该企业的服务窗，然后重试。";
    busy("reporting", "正在记录…");
    reportConfigError(e.code, e.message || "requestAuthCode failed", "requestAuthCode").then(function (report) {
      showError("auth_code", "无法获取钉钉授权", cause, ["requestAuthCode " + e.code, e.message], "",
        report && report.reference);
    });
  }

  function land(result) {
    var target;
    try {
      target = new URL(landingUrl, location.href);
    } catch (e) {
      target = null;
    }
    if (!target || (target.protocol !== "https:" && target.protocol !== "http:")) {
      showSignedIn(result);
      return;
    }
    busy("redirecting", "登录成功，正在进入企业应用…");
    target.hash = "token=" + encodeURIComponent(result.token);
    location.replace(target.href);
  }

  /** Exchange a code; a code the gateway calls invalid is replaced by a fresh one, once. */
  // A burst of sign-ins for one corp queues for DingTalk's quota; what cannot be served within the gateway's wait
  // gets 503 upstream_unavailable with an honest Retry-After, and the code was not sent yet (a paced refusal comes
  // before the call). So the page waits that long and posts the same code again, a few times, before it gives up.
  var MAX_QUEUE_RETRIES = 4;
  var MAX_RETRY_AFTER = 15; // seconds: a longer wait (DingTalk blocked, a long outage) is shown, not waited out

  function postLogin(body, retries) {
    return call("POST", "/channel/login", body).then(null, function (err) {
      var wait = err instanceof GatewayError && err.code === "upstream_unavailable" ? err.retryAfter : 0;
      if (wait > 0 && wait <= MAX_RETRY_AFTER && retries < MAX_QUEUE_RETRIES) {
        busy("queued", "登录人数较多，正在排队（约 " + wait + " 秒）…");
        return new Promise(function (resolve) {
          setTimeout(resolve, wait * 1000);
        }).then(function () {
          busy("signing-in", "正在登录…");
          return postLogin(body, retries + 1);
        });
      }
      throw err;
    });
  }

  function signIn(attempt) {
    // The container may now ask the person to choose or confirm: say so, not that the page is working.
    busy("authorizing", attempt === 0 ? "请在钉钉中确认授权…" : "授权码已失效，正在重新获取…");
    return requestCode(corpid).then(
      function (code) {
        busy("signing-in", "正在登录…");
        var body = { corpid: corpid, code: String(code || "") };
        if (oauth) {
          body.oauth = oauth;
        }
        return postLogin(body, 0).then(
          function (result) {
            if (result.redirect) {
              busy("redirecting", "登录成功，正在返回应用…");
              location.replace(result.redirect);
            } else if (landingUrl) {
              land(result);
            } else {
              showSignedIn(result);
            }
          },
          function (err) {
            if (err instanceof GatewayError && err.code === "code_invalid" && attempt === 0) {
              return signIn(1);
            }
            if (err instanceof GatewayError && err.code === "not_following") {
              showNotFollowing(err);
              return undefined;
            }
            if (err instanceof GatewayError && oauth && err.code === "invalid_request") {
              showError("oauth", "登录请求已失效", "这次登录请求已使用或已过期，请返回应用重新登录。", [
                "oauth", err.requestId && "请求 ID " + err.requestId], "", err.reference);
            } else if (err instanceof GatewayError) {
              showGatewayError(err);
            } else {
              showNetworkError();
            }
            return undefined;
          }
        );
      },
      onAuthCodeError
    );
  }

  function start() {
    if (!window.dd || (!current && !window.dd.channel)) {
      showError("jsapi_missing", "钉钉组件加载失败", "页面未能加载钉钉 JSAPI，请检查网络后重试。", ["dd undefined"]);
      return;
    }
    if (!inDingTalk()) {
      showOutside();
      return;
    }
    if (current) {
      if (!codeRequester(corpid)) {
        showError("jsapi_missing", "无法获取钉钉授权",
          "页面加载的钉钉组件或当前钉钉客户端不支持获取登录授权码。请将钉钉更新到最新版本后重试；如果问题持续，请联系企业管理员。",
          ["requestAuthCode unavailable"]);
        return;
      }
      signIn(0); // no dd.config: requestAuthCode with the clientId needs none (§7.3)
      return;
    }
    busy("configuring", "正在验证页面…");
    fetchConfig().then(
      function (config) {
        return configure(config).then(function () {
          return signIn(0);
        }, onConfigError);
      },
      function (err) {
        if (err instanceof GatewayError) {
          showGatewayError(err);
        } else {
          showNetworkError();
        }
      }
    );
  }

  $("retry").addEventListener("click", function () {
    // dd.config may be called once per page: a retry is a fresh page load.
    location.reload();
  });
  if ($("not-following-retry")) {
    $("not-following-retry").addEventListener("click", function () {
      // A fresh code and login: the follow event has updated the gateway's cached status, or its cache ran out.
      location.reload();
    });
  }

  start();
})();

/*
 * Sandbox mode only: a simulated DingTalk container that provides `window.dd` in any browser, so the
 * page's real code (static/channel-login.js) runs unchanged.
 *
 * dd.config is really checked, by the simulator's client side (POST /sandbox/client/check_config), so a
 * wrong signature fails the way DingTalk fails it (dd.error with 52013). dd.channel.permission.requestAuthCode
 * mints a follower's code (POST /sandbox/client/auth_code) after dd.config; dd.requestAuthCode({corpId,
 * clientId}) and the older dd.runtime.permission.requestAuthCode({corpId}) mint a current app's code (POST
 * /sandbox/client/app_code) without any dd.config, as the real client does (dingtalk-oapi.md §7.3). The person
 * is picked in the page's sandbox panel from the demo people of the page's corp (GET /sandbox/people); later
 * calls on the same page reuse that person, as the real container would.
 *
 * One-shot fault injection for tests and demos, `?sandbox_break=` in the page URL:
 *   signature   dd.config gets a tampered signature (expect 52013)
 *   url_changed the page changes its address after /channel/config signed it, before dd.config (expect 52013)
 *   code        the first auth code is one the simulator never issued (the page must ask for another)
 *   codes       every auth code is bogus (the page must give up after one fresh try)
 *   old_client  a client older than 7.0.45: dd.checkJsApi says dd.requestAuthCode is unsupported, and calling
 *               it fails (the page must fall back to dd.runtime.permission.requestAuthCode)
 * The flag is removed from the address bar at once, so "retry" (a reload) runs the healthy flow.
 */
(function () {
  "use strict";

  var FAULT_PARAM = "sandbox_break";
  var fault = takeFault();
  var codesIssued = 0;

  /** Read the fault flag and remove it from the URL, leaving every other byte of the URL as it was. */
  function takeFault() {
    var query = location.search.replace(/^\?/, "");
    if (!query) {
      return null;
    }
    var found = null;
    var kept = query.split("&").filter(function (part) {
      if (part.split("=")[0] === FAULT_PARAM) {
        found = decodeURIComponent(part.slice(FAULT_PARAM.length + 1));
        return false;
      }
      return true;
    });
    if (found !== null) {
      var search = kept.length ? "?" + kept.join("&") : "";
      history.replaceState(history.state, "", location.pathname + search + location.hash);
    }
    return found;
  }

  function post(path, body) {
    return fetch(path, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify(body)
    }).then(function (resp) {
      return resp.json();
    });
  }

  // ---- dd.config / ready / error -----------------------------------------------------------------

  var configured = null; // Promise of the config check, once dd.config has been called
  var whenConfigCalled = [];

  function configPromise() {
    if (configured) {
      return Promise.resolve(configured);
    }
    return new Promise(function (resolve) {
      whenConfigCalled.push(resolve);
    });
  }

  function config(options) {
    if (configured) {
      return; // like the real JSAPI: only the first dd.config counts
    }
    var opts = options || {};
    var signature = String(opts.signature || "");
    if (fault === "signature") {
      // Flip the last hex digit: still well-formed, no longer the right signature.
      signature = signature.slice(0, -1) + (signature.slice(-1) === "0" ? "1" : "0");
    }
    if (fault === "url_changed") {
      // The page changes its own address after it was signed (a router adding a query parameter): DingTalk
      // checks the address the page has now, so the signature no longer fits (expect 52013).
      history.replaceState(history.state, "", location.pathname + location.search + "&tab=orders" + location.hash);
    }
    configured = post("/sandbox/client/check_config", {
      corpId: opts.corpId,
      agentId: opts.agentId,
      timeStamp: opts.timeStamp,
      nonceStr: opts.nonceStr,
      signature: signature,
      type: opts.type,
      url: location.href
    }).then(
      function (result) {
        if (result && result.ok) {
          return { corpId: String(opts.corpId) };
        }
        throw {
          errorCode: result && result.errorCode !== undefined ? result.errorCode : 9,
          errorMessage: (result && (result.errorMessage || result.errmsg)) || "沙盒配置校验失败"
        };
      },
      function () {
        throw { errorCode: 9, errorMessage: "沙盒模拟器无响应" };
      }
    );
    configured.catch(function () {
      return null; // dd.error reports it
    });
    whenConfigCalled.splice(0).forEach(function (resolve) {
      resolve(configured);
    });
  }

  function ready(callback) {
    configPromise().then(function () {
      callback();
    }, function () {
      return null;
    });
  }

  function error(callback) {
    configPromise().then(null, function (err) {
      callback(err);
    });
  }

  // ---- the person picker (the container's "who is signed in to DingTalk") --------------------------

  var chosen = null; // Promise of the picked person: a follower's unionid (legacy window) or a member's userid

  /** The id the simulator mints a code for: the unionid for the legacy window, else the userid in the org. */
  function personId(kind, person) {
    return kind === "channel" ? person.unionid : person.userid;
  }

  function personDetail(kind, person) {
    if (kind === "service-window") {
      return "关注者 " + person.userid;
    }
    return person.userid ? "userid " + person.userid : "无企业账号";
  }

  function renderPeople(kind, people) {
    var list = document.getElementById("sandbox-people");
    list.textContent = "";
    people.forEach(function (person, index) {
      var id = "sandbox-person-" + index;
      var row = document.createElement("div");
      row.className = "picker__row";
      var input = document.createElement("input");
      input.type = "radio";
      input.name = "person";
      input.id = id;
      input.value = personId(kind, person);
      input.required = true;
      var label = document.createElement("label");
      label.htmlFor = id;
      var name = document.createElement("span");
      name.className = "picker__name";
      name.textContent = person.name + "（" + person.label + "）";
      var detail = document.createElement("span");
      detail.className = "picker__detail mono";
      detail.textContent = personDetail(kind, person);
      label.appendChild(name);
      label.appendChild(detail);
      row.appendChild(input);
      row.appendChild(label);
      list.appendChild(row);
    });
  }

  function pickPerson(corpId) {
    if (chosen) {
      return chosen;
    }
    chosen = fetch("/sandbox/people?corpid=" + encodeURIComponent(corpId), { credentials: "same-origin" })
      .then(function (resp) {
        if (!resp.ok) {
          throw { errorCode: 9, errorMessage: "沙盒中没有该企业的演示身份" };
        }
        return resp.json();
      })
      .then(function (data) {
        renderPeople(data.kind, data.people || []);
        var panel = document.getElementById("sandbox-panel");
        var form = document.getElementById("sandbox-picker");
        panel.hidden = false;
        document.getElementById("sandbox-legend").focus();
        return new Promise(function (resolve) {
          form.addEventListener("submit", function onSubmit(event) {
            event.preventDefault();
            var picked = form.querySelector("input[name=person]:checked");
            var missing = document.getElementById("sandbox-picker-error");
            if (!picked) {
              // The page's own message, in Chinese (the form is novalidate: no browser bubble in English).
              if (missing) {
                missing.hidden = false;
              }
              return;
            }
            if (missing) {
              missing.hidden = true;
            }
            form.removeEventListener("submit", onSubmit);
            panel.hidden = true;
            resolve(picked.value);
          });
        });
      });
    chosen.catch(function () {
      chosen = null; // let a later call try again
    });
    return chosen;
  }

  // ---- minting codes -----------------------------------------------------------------------------------

  /** A code that looks real but that the simulator never issued, when a fault asks for one (else null). */
  function bogusCode() {
    codesIssued += 1;
    if (fault === "codes" || (fault === "code" && codesIssued === 1)) {
      // The exchange then fails with 40078, as for a spent code.
      return { code: "0000sandbox0stale0code0" + codesIssued };
    }
    return null;
  }

  function minted(data) {
    if (data && data.code) {
      return { code: data.code };
    }
    throw { errorCode: (data && data.errcode) || 9, errorMessage: (data && data.errmsg) || "沙盒授权失败" };
  }

  function mintCode(corpId, unionid) {
    var bogus = bogusCode();
    if (bogus) {
      return Promise.resolve(bogus);
    }
    return post("/sandbox/client/auth_code", { corpid: corpId, unionid: unionid }).then(minted);
  }

  /** An app's code; without clientId (the older API) the gateway's sandbox names the corp's registered app. */
  function mintAppCode(corpId, clientId, userid) {
    var bogus = bogusCode();
    if (bogus) {
      return Promise.resolve(bogus);
    }
    var body = { corpid: corpId, userid: userid };
    if (clientId !== null) {
      body.client_id = clientId;
    }
    return post("/sandbox/client/app_code", body).then(minted);
  }

  /** Call the options' onSuccess/onFail when result settles, and hand result back (the JSAPI returns a promise). */
  function settle(result, opts) {
    result.then(
      function (info) {
        if (typeof opts.onSuccess === "function") {
          opts.onSuccess(info);
        }
      },
      function (err) {
        if (typeof opts.onFail === "function") {
          opts.onFail(err);
        }
      }
    );
    return result;
  }

  // ---- dd.channel.permission.requestAuthCode (legacy window: after dd.config) ------------------------

  function requestAuthCode(options) {
    var opts = options || {};
    var result = configPromise()
      .then(function (config) {
        return config;
      }, function () {
        throw { errorCode: 7, errorMessage: "dd.config 未通过校验，无权调用 requestAuthCode" };
      })
      .then(function (config) {
        if (String(opts.corpId || "") !== config.corpId) {
          throw { errorCode: 3, errorMessage: "corpId 与 dd.config 不一致" };
        }
        return pickPerson(config.corpId).then(function (unionid) {
          return mintCode(config.corpId, unionid);
        });
      });
    return settle(result, opts);
  }

  // ---- dd.requestAuthCode and dd.runtime.permission.requestAuthCode (current apps: no dd.config) -----

  function appCode(opts, clientId) {
    var corpId = String(opts.corpId || "");
    var result = Promise.resolve().then(function () {
      if (!corpId) {
        throw { errorCode: 3, errorMessage: "缺少参数 corpId" };
      }
      if (clientId === "") {
        throw { errorCode: 3, errorMessage: "缺少参数 clientId" };
      }
      return pickPerson(corpId).then(function (userid) {
        return mintAppCode(corpId, clientId, userid);
      });
    });
    return settle(result, opts);
  }

  function requestAppCode(options) {
    var opts = options || {};
    return appCode(opts, String(opts.clientId || ""));
  }

  function requestOldAppCode(options) {
    return appCode(options || {}, null);
  }

  // What an older client does with dd.requestAuthCode: the vendored SDK has the function, the client not the API.
  function unsupported(options) {
    var result = Promise.reject({ errorCode: 9, errorMessage: "当前客户端版本不支持该 API，请升级钉钉" });
    return settle(result, options || {});
  }

  // dd.checkJsApi as the SDK answers it from its table of minimum client versions.
  function checkJsApi(options) {
    var list = (options && options.jsApiList) || [];
    var answer = {};
    list.forEach(function (name) {
      answer[name] = !(fault === "old_client" && name === "runtime.permission.requestAuthCodeV2");
    });
    return Promise.resolve(answer);
  }

  var again = document.getElementById("sandbox-again");
  if (again) {
    again.addEventListener("click", function () {
      location.reload();
    });
  }

  var dd = {
    env: { platform: "sandbox", platformSub: "", version: "sandbox", appType: "WEB", language: "zh-CN" },
    config: config,
    ready: ready,
    error: error,
    checkJsApi: checkJsApi,
    channel: { permission: { requestAuthCode: requestAuthCode } },
    runtime: { permission: { requestAuthCode: requestOldAppCode } },
    // Client 7.0.45 and later; an older one (old_client) has the SDK's function but refuses the call.
    requestAuthCode: fault === "old_client" ? unsupported : requestAppCode
  };
  window.dd = dd;
})();

/*
 * Sandbox mode only: a simulated DingTalk container that provides `window.dd` in any browser, so the
 * page's real code (static/channel-login.js) runs unchanged.
 *
 * dd.config is really checked, by the simulator's client side (POST /sandbox/client/check_config), so a
 * wrong signature fails the way DingTalk fails it (dd.error with 52013). requestAuthCode mints a code
 * (POST /sandbox/client/auth_code) for a demo follower picked in the page's sandbox panel; later calls
 * on the same page reuse that follower, as the real container would.
 *
 * One-shot fault injection for tests and demos, `?sandbox_break=` in the page URL:
 *   signature  dd.config gets a tampered signature (expect 52013)
 *   code       the first auth code is one the simulator never issued (the page must ask for another)
 *   codes      every auth code is bogus (the page must give up after one fresh try)
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

  // ---- the follower picker (the container's "who is signed in to DingTalk") ------------------------

  var chosen = null; // Promise of the picked follower's unionid

  function renderPeople(people) {
    var list = document.getElementById("sandbox-people");
    list.textContent = "";
    people.forEach(function (person, index) {
      var id = "sandbox-person-" + index;
      var row = document.createElement("div");
      row.className = "picker__row";
      var input = document.createElement("input");
      input.type = "radio";
      input.name = "unionid";
      input.id = id;
      input.value = person.unionid;
      input.required = true;
      var label = document.createElement("label");
      label.htmlFor = id;
      var name = document.createElement("span");
      name.className = "picker__name";
      name.textContent = person.name + "（" + person.label + "）";
      var detail = document.createElement("span");
      detail.className = "picker__detail mono";
      detail.textContent = person.userid ? "userid " + person.userid : "无企业账号";
      label.appendChild(name);
      label.appendChild(detail);
      row.appendChild(input);
      row.appendChild(label);
      list.appendChild(row);
    });
  }

  function pickFollower() {
    if (chosen) {
      return chosen;
    }
    chosen = fetch("/sandbox/people", { credentials: "same-origin" })
      .then(function (resp) {
        return resp.json();
      })
      .then(function (data) {
        renderPeople(data.people || []);
        var panel = document.getElementById("sandbox-panel");
        var form = document.getElementById("sandbox-picker");
        panel.hidden = false;
        document.getElementById("sandbox-legend").focus();
        return new Promise(function (resolve) {
          form.addEventListener("submit", function onSubmit(event) {
            event.preventDefault();
            var picked = form.querySelector("input[name=unionid]:checked");
            if (!picked) {
              return;
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

  // ---- dd.channel.permission.requestAuthCode -----------------------------------------------------

  function mintCode(corpId, unionid) {
    codesIssued += 1;
    if (fault === "codes" || (fault === "code" && codesIssued === 1)) {
      // Looks like a real code; the simulator never issued it, so the exchange fails with 40078.
      return Promise.resolve({ code: "0000sandbox0stale0code0" + codesIssued });
    }
    return post("/sandbox/client/auth_code", { corpid: corpId, unionid: unionid }).then(function (data) {
      if (data && data.code) {
        return { code: data.code };
      }
      throw { errorCode: (data && data.errcode) || 9, errorMessage: (data && data.errmsg) || "沙盒授权失败" };
    });
  }

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
        return pickFollower().then(function (unionid) {
          return mintCode(config.corpId, unionid);
        });
      });
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

  var again = document.getElementById("sandbox-again");
  if (again) {
    again.addEventListener("click", function () {
      location.reload();
    });
  }

  window.dd = {
    env: { platform: "sandbox", platformSub: "", version: "sandbox", appType: "WEB", language: "zh-CN" },
    config: config,
    ready: ready,
    error: error,
    channel: { permission: { requestAuthCode: requestAuthCode } }
  };
})();

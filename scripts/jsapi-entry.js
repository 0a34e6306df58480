// Entry for the vendored DingTalk JSAPI bundle (see scripts/vendor-jsapi).
// Only what the sign-in page calls, on every DingTalk platform (union entry): dd.config / ready / error / env /
// checkJsApi; dd.channel.permission.requestAuthCode (legacy service window); dd.requestAuthCode({corpId, clientId})
// (current apps, client 7.0.45+) and the archived dd.runtime.permission.requestAuthCode({corpId}) for older clients.
import * as sdk from "dingtalk-jsapi/entry/union";
import requestAuthCode from "dingtalk-jsapi/api/channel/permission/requestAuthCode";
import requestAppAuthCode from "dingtalk-jsapi/api/union/requestAuthCode";
import requestRuntimeAuthCode from "dingtalk-jsapi/api/runtime/permission/requestAuthCode";

const dd = Object.assign({}, sdk, {
  channel: { permission: { requestAuthCode: requestAuthCode } },
  requestAuthCode: requestAppAuthCode,
  runtime: { permission: { requestAuthCode: requestRuntimeAuthCode } },
});
window.dd = dd;

// Entry for the vendored DingTalk JSAPI bundle (see scripts/vendor-jsapi).
// Only what the follower sign-in page calls: dd.config / ready / error / env and
// dd.channel.permission.requestAuthCode, on every DingTalk platform (union entry).
import * as sdk from "dingtalk-jsapi/entry/union";
import requestAuthCode from "dingtalk-jsapi/api/channel/permission/requestAuthCode";

const dd = Object.assign({}, sdk, {
  channel: { permission: { requestAuthCode: requestAuthCode } },
});
window.dd = dd;

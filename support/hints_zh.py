"""The support console's hints in Simplified Chinese (issue 22, item 4): its readers are Chinese-speaking support
staff. One line per errcode, the same advice as oapi/hints.py (which stays the English source for the HTTP API's
`hint`); DingTalk's own documented text is shown beside it by the console (oapi.hints.dingtalk_text).

A code without a translation here falls back to the English hint, so a new errcode is never shown without advice.
"""

from __future__ import annotations

from oapi.hints import canonical_code, hint_for

_BUSY = "钉钉返回“系统繁忙”，网关已退避重试；请几秒后再试。"
_RATE = "触发钉钉限流：网关会按企业和接口退避，所有进程共同遵守；请稍后再试。"

HINTS_ZH: dict[int | str, str] = {
    -1: _BUSY,
    33001: "access_token 被拒绝，网关已刷新一次；若持续出现，请检查应用状态。",
    40001: "密钥被拒绝（gettoken：corpSecret 错误）。请核对 corpSecret；把 channelSecret 当作 corpSecret 也会这样。",
    40014: "access_token 无效（已吊销，或来自另一条凭证管道），网关已刷新一次。",
    42001: "access_token 已过期，网关已刷新一次。",
    88: "钉钉包装了一个鉴权错误，请看它的 sub_code。",
    40089: "corpid 或密钥错误：核对 `flask corp add` 登记的 CORPID 与密钥。",
    60020: "网关的出口 IP 不在应用的 IP 白名单中：在钉钉开发者后台添加报错信息里给出的 IP。",
    60011: "应用没有调用该接口的权限：在钉钉开发者后台为应用申请该权限。",
    40078: "临时授权码不存在或已被使用：页面需要重新获取授权码（页面会自动重试一次）。",
    40029: "临时授权码无效：页面需要重新获取授权码。",
    60121: "企业中找不到该 unionid 对应的用户：这位关注者在企业里没有员工或外部联系人记录（未关联，不是故障）。",
    43004: "向钉钉 POST 时 Content-Type 错误：这是网关的缺陷，请报告。",
    45009: _RATE,
    90002: _RATE,
    90005: _RATE,
    90006: _RATE,
    90018: "触发钉钉限流（每企业每接口每秒调用次数）：网关按企业和接口排队、退避；请稍后再试。",
    1111: "钉钉封禁了网关的出口 IP（20 秒内调用超过一万次），约 5 分钟后解除；期间所有企业的调用都会暂停。",
    52010: "dd.config：corpId 错误。请核对页面传入的 corpid。",
    52011: "dd.config：读取 jsapi_ticket 失败（来自其他企业或应用，或已过期）。网关会刷新 ticket。",
    52012: "dd.config：生成签名失败。",
    52013: "dd.config：签名校验失败。用签名检查比对签名时的 url 与页面的 location.href（去掉 #片段、端口一致）；"
    "ticket 过期或哈希算法（sha1/sha256）不一致也会导致。",
    52014: "dd.config：url 错误。",
    52015: "dd.config：nonceStr 错误。",
    52016: "dd.config：签名参数错误。",
    52017: "dd.config：jsApiList 错误。",
    52018: "dd.config：timeStamp 错误。",
    52019: "dd.config：agentId 错误。旧版服务窗的 ticket 必须由 corpid + channelSecret 获得且 type 为 1；"
    "请核对页面的 agentid 与登记的是否一致。",
    "InvalidAuthentication": "应用的 access_token 被拒绝，网关已刷新一次；若持续出现，请在钉钉开发者后台检查应用状态。",
    "invalidClientIdOrSecret": "appKey/appSecret 错误，或 appSecret 已被重置：从钉钉开发者后台的应用凭证页重新复制，"
    "再用 `flask corp add` 重新登记。",
    "Forbidden.AccessDenied.IpNotInWhiteList": "网关的出口 IP 不在应用的 IP 白名单中："
    "在钉钉开发者后台添加钉钉看到的 IP。",
    "Forbidden.AccessDenied.AccessTokenPermissionDenied": "应用缺少该接口所需的权限：在钉钉开发者后台的权限管理中申请，"
    "然后重新发布应用。",
    "Forbidden.AccessDenied.ApiCountLimitForOrg": "组织（标准版）本月的接口调用额度已用完：升级组织版本或等待下月。",
    "Forbidden.AccessDenied.QpsLimitForAppkeyAndApi": "触发钉钉限流（每应用每接口每秒）：网关排队、退避；请稍后再试。",
    "Forbidden.AccessDenied.QpsLimitForApi": "触发钉钉限流（每接口）：网关排队、退避；请稍后再试。",
    "Forbidden.AccessDenied.QpmLimitForAppkeyAndApi": "触发钉钉限流（每应用每接口每分钟）：网关退避；请稍后再试。",
    "systemBusy": _BUSY,
    "system.busy": _BUSY,
    "systemError": "钉钉服务端出错；请几秒后再试。",
    "illegalRequest.account": "服务窗账号被拒绝：未传 accountId 时出现，说明这个 appKey 属于真实组织的应用，"
    "而不是服务窗虚拟组织里的应用。",
    "illegalRequest": "钉钉拒绝了请求；对关注者接口而言，服务窗自己的应用不能传 accountId。",
    "illegalParameter.userId": "关注者的 userId 被拒绝：它必须是服务窗应用免登得到的 id。",
    "illegalRequest.followerNotExist": "服务窗没有这位关注者。",
    "request.too.fast": "触发服务窗接口限流：网关退避；请稍后再试。",
}


def hint_zh(errcode: int | str | None) -> str | None:
    """The console's hint for an errcode, in Chinese where there is one, else the English hint; None for None."""
    if errcode is None:
        return None
    return HINTS_ZH.get(canonical_code(errcode)) or hint_for(errcode)

// The login page: shows why a login failed, in the remembered language, and
// goes straight to the page when this browser is already logged in.

import { applyStatic, storeLanguage, storedLanguage, translate, addStrings } from "./i18n.js";

addStrings({
  "zh-CN": {
    "login.title": "员工登录",
    "login.hint": "请输入管理员发给您的访问令牌。只需输入一次，本设备会保持登录。",
    "login.token": "访问令牌",
    "login.submit": "登录",
    "login.error.invalid": "令牌无效，请检查后重试。",
    "login.error.scope": "此令牌不能打开状态页（需要 staff 或 read 权限）。",
    "login.error.locked": "错误次数过多，请 15 分钟后再试。",
    "login.error.origin": "登录请求来自其他网站，已拒绝。",
  },
  en: {
    "login.title": "Staff login",
    "login.hint": "Enter the access token your administrator gave you. You only need to do this once on this device.",
    "login.token": "Access token",
    "login.submit": "Log in",
    "login.error.invalid": "That token is not valid; check it and try again.",
    "login.error.scope": "This token cannot open the status page (it needs the staff or read scope).",
    "login.error.locked": "Too many wrong tokens; try again in 15 minutes.",
    "login.error.origin": "The login came from another site and was refused.",
  },
});

let lang = storedLanguage();

function render() {
  document.documentElement.lang = lang;
  applyStatic(document.body, lang);
  document.title = translate(lang, "login.title");
  const switcher = document.getElementById("language-switch");
  switcher.textContent = translate(lang, "app.switch");
  switcher.lang = lang === "en" ? "zh-CN" : "en";
  const error = new URLSearchParams(window.location.search).get("error");
  const box = document.getElementById("login-error");
  const key = `login.error.${error}`;
  box.hidden = !error;
  box.textContent = error ? translate(lang, key) : "";
}

document.getElementById("language-switch").addEventListener("click", () => {
  lang = lang === "en" ? "zh-CN" : "en";
  storeLanguage(lang);
  render();
});
render();

// A link from another site arrives without the SameSite=Strict cookie; ask once
// with it, and go to the page when this browser is in fact logged in.
fetch("/api/session", { credentials: "same-origin", cache: "no-store" })
  .then((response) => {
    if (response.ok) window.location.replace("/");
  })
  .catch(() => {});

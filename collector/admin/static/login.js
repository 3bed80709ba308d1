// A login link carries the token after `#` (`/admin/login#token=…`): browsers never send that
// part to the server, so it stays out of request logs and proxies. Take it out of the address
// bar and the history entry at once, then log in with it as if it had been typed.
(function () {
  var match = /^#token=(.+)$/.exec(location.hash);
  if (!match) return;
  history.replaceState(null, "", location.pathname);
  var form = document.querySelector("form.login");
  form.querySelector("#token").value = decodeURIComponent(match[1]);
  form.submit();
})();

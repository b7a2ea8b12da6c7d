// Signed out while a board is open (token revoked, password or role changed, user removed):
// the board's next refresh gets 401. Reload, so the screen shows the sign-in page (or, for a
// wall screen, whatever its bookmark leads to) instead of a board that silently froze.
(function () {
  var original = window.fetch;
  if (!original) {
    return;
  }
  window.fetch = function () {
    return original.apply(this, arguments).then(function (response) {
      if (response.status === 401 && String(response.url).indexOf("_dash-update-component") !== -1) {
        window.location.reload();
      }
      return response;
    });
  };
})();

// Alerts page (dashboards/pages/alerts.py): the open alerts' durations tick every second
// between the server's refreshes. Each cell carries the alert's start and the server's clock
// at render time (data-since, data-now, ms), so a browser whose clock is off still counts
// the server's time, in the same form as dashboards/i18n.py's format_duration.
(function () {
  function fmt(seconds, lang) {
    var total = Math.max(0, Math.floor(seconds));
    var days = Math.floor(total / 86400);
    var rest = total % 86400;
    var h = Math.floor(rest / 3600);
    var m = Math.floor((rest % 3600) / 60);
    var s = rest % 60;
    var two = function (n) { return (n < 10 ? "0" : "") + n; };
    if (days) {
      return lang === "zh" ? days + "天" + two(h) + "小时" : days + " d " + two(h) + " h";
    }
    return h + ":" + two(m) + ":" + two(s);
  }
  var seen = new WeakMap(); // cell -> local time when its server clock was read
  setInterval(function () {
    var cells = document.querySelectorAll(".al-duration[data-since]");
    var local = Date.now();
    for (var i = 0; i < cells.length; i++) {
      var cell = cells[i];
      var key = cell.getAttribute("data-now");
      var mark = seen.get(cell);
      if (!mark || mark.key !== key) {
        mark = { key: key, local: local };
        seen.set(cell, mark);
      }
      var now = Number(key) + (local - mark.local);
      cell.textContent = fmt((now - Number(cell.getAttribute("data-since"))) / 1000, cell.getAttribute("data-lang"));
    }
  }, 1000);
})();

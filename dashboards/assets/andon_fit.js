// Andon tiles: when a tile's text is taller or wider than the tile (a long name in a small
// tile: 50 machines on a laptop), scale that tile's text down until it fits, so nothing is
// ever cut. The CSS multiplies every tile font size by --fit. Runs before the next paint after
// Dash changes a tile, and again for every tile when the window changes size.
(function () {
  var MIN = 0.4;

  function overflows(tile) {
    return tile.scrollHeight > tile.clientHeight + 1 || tile.scrollWidth > tile.clientWidth + 1;
  }

  function fit(tile) {
    tile.style.setProperty("--fit", "1");
    var scale = 1;
    for (var i = 0; i < 8 && overflows(tile) && scale > MIN; i++) {
      var ratio = Math.min(
        tile.clientHeight / tile.scrollHeight,
        tile.clientWidth / Math.max(tile.scrollWidth, 1)
      );
      scale = Math.max(MIN, scale * Math.min(0.96, Math.sqrt(ratio)));
      tile.style.setProperty("--fit", scale.toFixed(3));
    }
  }

  var dirty = new Set();
  var all = false;
  var pending = false;

  function flush() {
    pending = false;
    var tiles = all ? document.querySelectorAll(".andon .tile") : dirty;
    tiles.forEach(function (tile) {
      if (tile.isConnected) fit(tile);
    });
    dirty.clear();
    all = false;
  }

  function schedule() {
    if (!pending) {
      pending = true;
      requestAnimationFrame(flush);
    }
  }

  new MutationObserver(function (mutations) {
    mutations.forEach(function (m) {
      var node = m.target.nodeType === 1 ? m.target : m.target.parentElement;
      var tile = node && node.closest(".andon .tile");
      if (tile) {
        dirty.add(tile);
      } else {
        all = true; // a board or a line was (re)drawn
      }
    });
    schedule();
  }).observe(document.documentElement, { childList: true, subtree: true, characterData: true });

  window.addEventListener("resize", function () {
    all = true;
    schedule();
  });
})();

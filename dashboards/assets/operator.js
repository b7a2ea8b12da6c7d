// Operator tablet (dashboards/pages/operator.py): a tap on any [data-tap] button sends its
// payload to the server through the op-tap store. One listener on the document instead of a
// callback per button: the buttons are re-rendered as stops come and go.
document.addEventListener("click", function (event) {
  var el = event.target && event.target.closest ? event.target.closest("[data-tap]") : null;
  if (!el || el.disabled || !el.closest(".op")) return; // only on the operator page
  var clientside = window.dash_clientside;
  if (!clientside || !clientside.set_props) return;
  var tap;
  try {
    tap = JSON.parse(el.getAttribute("data-tap"));
  } catch (err) {
    return;
  }
  // A changing field, so a second tap on the same button is a change too (a double tap is
  // made harmless on the server, not here).
  tap.t = Date.now() + Math.random();
  clientside.set_props("op-tap", { data: tap });
});

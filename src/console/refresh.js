// Marks each picture once the browser has it, so that a test (or a person) can tell a picture
// that loaded from one that did not.
function markPictures() {
  document.querySelectorAll("img[data-episode]").forEach(function (img) {
    function mark() { img.dataset.loaded = String(img.naturalWidth); }
    if (img.complete && img.naturalWidth > 0) { mark(); } else { img.addEventListener("load", mark); }
  });
}
// Refreshes the list in place every few seconds (no reload: the page never flickers), unless
// someone is typing a note.
function refresh() {
  var active = document.activeElement;
  if (active && active.name === "note") { return; }
  fetch(location.pathname, { cache: "no-store" })
    .then(function (r) { return r.text(); })
    .then(function (text) {
      var fresh = new DOMParser().parseFromString(text, "text/html");
      var open = fresh.getElementById("open");
      if (open) { document.getElementById("open").replaceWith(open); }
      document.title = fresh.title;
      markPictures();
    })
    .catch(function () {});
}
document.addEventListener("DOMContentLoaded", function () {
  markPictures();
  setInterval(refresh, REFRESH_SECS * 1000);
});

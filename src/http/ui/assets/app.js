// Herald admin UI: small enhancements. Every page works without this file.
"use strict";
(function () {
  // Live pages: <meta name="herald-refresh" content="SECONDS"> reloads the
  // page while it is visible (a campaign's progress, a running import).
  var m = document.querySelector('meta[name="herald-refresh"]');
  if (m) {
    var s = parseInt(m.getAttribute("content"), 10) || 5;
    setInterval(function () { if (!document.hidden) location.reload(); }, s * 1000);
  }
  // Uploads with a progress bar: <form data-progress="ID-of-progress">.
  document.querySelectorAll("form[data-progress]").forEach(function (form) {
    form.addEventListener("submit", function (ev) {
      var bar = document.getElementById(form.getAttribute("data-progress"));
      if (!bar || !window.XMLHttpRequest) return;
      ev.preventDefault();
      var xhr = new XMLHttpRequest();
      xhr.open("POST", form.action);
      bar.hidden = false;
      xhr.upload.onprogress = function (e) {
        if (e.lengthComputable) { bar.max = e.total; bar.value = e.loaded; }
      };
      xhr.onload = function () {
        // The answer is the next page (after its redirect).
        location.href = xhr.responseURL || form.action;
      };
      xhr.onerror = function () { form.submit(); };
      xhr.send(new FormData(form));
      form.querySelectorAll("button").forEach(function (b) { b.disabled = true; });
    });
  });
  // Confirmations: <button data-confirm="Really?">.
  document.querySelectorAll("[data-confirm]").forEach(function (b) {
    b.addEventListener("click", function (ev) {
      if (!confirm(b.getAttribute("data-confirm"))) ev.preventDefault();
    });
  });
})();

// otaforge dashboard: live updates and actions. The pages work without this script; with it,
// a server-sent event `changed` makes the page re-read itself and swap its <main>, and the
// action buttons POST JSON (which the service's browser guard requires) instead of a form.
(function () {
  'use strict';
  var status = document.getElementById('live');
  var refreshes = 0;
  var timer = null;

  function say(text) {
    if (status) { status.textContent = text; }
  }

  function refresh() {
    timer = null;
    fetch(window.location.href, { headers: { Accept: 'text/html' }, cache: 'no-store' })
      .then(function (r) { return r.ok ? r.text() : Promise.reject(new Error(String(r.status))); })
      .then(function (text) {
        var next = new DOMParser().parseFromString(text, 'text/html').querySelector('main');
        var main = document.querySelector('main');
        if (next && main) {
          main.replaceWith(document.importNode(next, true));
          refreshes += 1;
          document.body.setAttribute('data-refreshes', String(refreshes));
          say('live, updated ' + new Date().toLocaleTimeString());
        }
      })
      .catch(function () { say('live, update failed'); });
  }

  if (window.EventSource) {
    var events = new EventSource('/ui/events');
    events.addEventListener('open', function () {
      document.body.setAttribute('data-live', 'on');
      say('live');
    });
    events.addEventListener('changed', function () {
      // Many changes in a burst make one refresh.
      if (timer === null) { timer = window.setTimeout(refresh, 150); }
    });
    events.onerror = function () { say('reconnecting'); };
  }

  document.addEventListener('submit', function (ev) {
    var form = ev.target;
    if (!form.hasAttribute('data-action')) { return; }
    ev.preventDefault();
    fetch(form.action, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: '{}' })
      .then(function (r) {
        if (r.ok) { refresh(); } else { r.text().then(function () { say('action refused (' + r.status + ')'); }); }
      });
  });
})();

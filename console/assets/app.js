// The Event Monitor's only script (embedded; the page's CSP allows no other): dates in the
// browser's time zone and language, time filters sent as UTC, the live tail, the banner's retry.
'use strict';
(function () {
  const lang = document.documentElement.lang || 'en';
  const fmt = new Intl.DateTimeFormat(lang, { dateStyle: 'medium', timeStyle: 'medium' });

  const short = new Intl.DateTimeFormat(lang, { month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit' });

  function localTimes(root) {
    root.querySelectorAll('time[datetime]').forEach(function (el) {
      const d = new Date(el.getAttribute('datetime'));
      if (!isNaN(d)) { el.textContent = fmt.format(d); el.title = d.toISOString(); }
    });
    // the chart's time axis and bar tooltips (server-rendered in UTC)
    root.querySelectorAll('svg.chart [data-utc]').forEach(function (el) {
      const d = new Date(el.getAttribute('data-utc'));
      if (!isNaN(d)) { el.textContent = short.format(d) + (el.getAttribute('data-rest') || ''); }
    });
  }

  // datetime-local inputs: shown in local time, sent as UTC (RFC 3339)
  function timeFilters() {
    document.querySelectorAll('form[data-local-times]').forEach(function (form) {
      form.querySelectorAll('input[type=datetime-local][data-utc]').forEach(function (input) {
        const d = new Date(input.dataset.utc);
        if (isNaN(d)) return;
        const pad = function (n) { return String(n).padStart(2, '0'); };
        input.value = d.getFullYear() + '-' + pad(d.getMonth() + 1) + '-' + pad(d.getDate()) + 'T' +
          pad(d.getHours()) + ':' + pad(d.getMinutes());
      });
      form.addEventListener('submit', function () {
        form.querySelectorAll('input[type=datetime-local]').forEach(function (input) {
          if (!input.value) { input.disabled = true; return; }
          const d = new Date(input.value);
          if (isNaN(d)) return;
          const hidden = document.createElement('input');
          hidden.type = 'hidden'; hidden.name = input.name; hidden.value = d.toISOString();
          input.disabled = true;
          form.appendChild(hidden);
        });
        // empty fields stay out of the URL
        form.querySelectorAll('input:not([type=hidden]), select').forEach(function (el) {
          if (!el.value) el.disabled = true;
        });
      });
    });
  }

  function liveTail() {
    const box = document.querySelector('[data-live]');
    const body = document.querySelector('[data-live-target]');
    if (!box || !body || !window.EventSource) return;
    const toggle = box.querySelector('[data-live-toggle]');
    const counter = box.querySelector('[data-live-count]');
    let paused = false, fresh = 0, source = null;
    const held = [];
    function firstId() {
      const tr = body.querySelector('tr[data-id]');
      return tr ? tr.dataset.id : '00000000-0000-0000-0000-000000000000';
    }
    function show(html) {
      const t = document.createElement('tbody');
      t.innerHTML = html; // server-rendered rows: every value in them is escaped by the server
      const rows = Array.from(t.children);
      rows.reverse().forEach(function (tr) { tr.classList.add('fresh'); body.insertBefore(tr, body.firstChild); });
      localTimes(body);
      fresh += rows.length;
      counter.textContent = counter.dataset.template.replace('#', fresh);
      document.querySelectorAll('p.empty').forEach(function (p) { p.remove(); });
    }
    function connect() {
      const url = box.dataset.live + (box.dataset.live.indexOf('?') >= 0 ? '&' : '?') + 'after=' + firstId();
      source = new EventSource(url);
      source.addEventListener('rows', function (e) {
        box.classList.remove('down');
        if (paused) { held.push(e.data); } else { show(e.data); }
      });
      source.addEventListener('down', function () { box.classList.add('down'); });
      source.addEventListener('signed-out', function () { source.close(); window.location.reload(); });
    }
    toggle.addEventListener('click', function () {
      paused = !paused;
      box.classList.toggle('paused', paused);
      toggle.textContent = paused ? box.dataset.labelResume : box.dataset.labelPause;
      if (!paused) { while (held.length) show(held.shift()); }
    });
    connect();
  }

  // the database-down banner: try the page again by itself
  function retryBanner() {
    const b = document.querySelector('[data-retry="5"]');
    if (b) setTimeout(function () { window.location.reload(); }, 5000);
  }

  document.addEventListener('DOMContentLoaded', function () {
    localTimes(document);
    timeFilters();
    liveTail();
    retryBanner();
  });
})();

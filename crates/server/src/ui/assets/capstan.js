// capstan's web UI: relative times that stay true, and a job page that follows its job live
// (log lines, state, CPU and memory) over server-sent events. Everything else is plain HTML
// and htmx.
(function () {
  "use strict";

  function ago(ms) {
    var d = Math.round(Math.abs(Date.now() - ms) / 1000), a;
    if (d < 60) a = d + " s";
    else if (d < 3600) a = Math.floor(d / 60) + " min";
    else if (d < 86400) a = Math.floor(d / 3600) + " h";
    else a = Math.floor(d / 86400) + " days";
    return Date.now() >= ms ? a + " ago" : "in " + a;
  }

  function refreshTimes() {
    document.querySelectorAll("time[data-ms]").forEach(function (t) {
      t.textContent = ago(Number(t.dataset.ms));
    });
  }
  setInterval(refreshTimes, 15000);

  function bytes(n) {
    var u = ["B", "KiB", "MiB", "GiB", "TiB"], i = 0;
    while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(1) : n) + " " + u[i];
  }

  // A small line chart of the last 90 samples.
  function draw(svg, values, floor) {
    var max = Math.max.apply(null, values.concat([floor])) * 1.1 || 1;
    var n = values.length, step = n > 1 ? 300 / (n - 1) : 0;
    var pts = values.map(function (v, i) {
      return (i * step).toFixed(1) + "," + (60 - (v / max) * 58 - 1).toFixed(1);
    });
    svg.querySelector("polyline").setAttribute("points", pts.join(" "));
  }

  function follow(log) {
    var source = new EventSource(log.dataset.stream);
    var follow = document.getElementById("follow");
    var cpu = [], mem = [], opened = false;
    source.addEventListener("open", function () {
      // A reconnect sends the log from its start again.
      if (opened) log.innerHTML = "";
      opened = true;
    });
    source.addEventListener("log", function (e) {
      var empty = document.getElementById("log-empty");
      if (empty) empty.remove();
      log.insertAdjacentHTML("beforeend", e.data);
      if (!follow || follow.checked) log.scrollTop = log.scrollHeight;
    });
    // The summary is fetched again whenever it shows another state than the stream's last.
    // A refresh asked for while one is in flight can be lost (the element it was queued on
    // is swapped out), so each swap checks again, a few times per state.
    var lastState = null, tries = 0;
    function refresh() {
      var summary = document.getElementById("summary");
      if (!summary || lastState === null || summary.dataset.state === lastState) return;
      if (tries++ < 5) document.body.dispatchEvent(new Event("job-state"));
    }
    document.body.addEventListener("htmx:afterSettle", function () {
      setTimeout(refresh, 100);
    });
    source.addEventListener("state", function (e) {
      if (e.data !== lastState) { lastState = e.data; tries = 0; }
      refresh();
    });
    source.addEventListener("usage", function (e) {
      var u = JSON.parse(e.data);
      document.getElementById("usage").hidden = false;
      if (u.cpu_percent != null) {
        cpu.push(u.cpu_percent); if (cpu.length > 90) cpu.shift();
        document.getElementById("cpu-now").textContent = u.cpu_percent.toFixed(0) + " %";
        draw(document.getElementById("cpu-chart"), cpu, 100);
      }
      if (u.memory_bytes != null) {
        mem.push(u.memory_bytes); if (mem.length > 90) mem.shift();
        document.getElementById("mem-now").textContent = bytes(u.memory_bytes);
        draw(document.getElementById("mem-chart"), mem, 1);
      }
    });
    source.addEventListener("end", function (e) {
      source.close();
      // Over before two samples: no chart to draw.
      if (cpu.length < 2 && mem.length < 2) document.getElementById("usage").hidden = true;
      log.dataset.ended = "true";
      var empty = document.getElementById("log-empty");
      if (empty) empty.textContent = "No output.";
      if (e.data !== "gone" && e.data !== lastState) { lastState = e.data; tries = 0; }
      document.body.dispatchEvent(new Event("job-state"));
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var log = document.getElementById("log");
    if (log && log.dataset.stream) follow(log);
  });
})();

// Draws the overview's chart (credits spent per day, stacked by model) from the JSON the
// page carries; the same numbers are in the table under it, and in its CSV.
(function () {
  "use strict";
  var data = document.getElementById("chart-data");
  var canvas = document.getElementById("daily-chart");
  if (!data || !canvas || typeof Chart === "undefined") {
    return;
  }
  var chart = JSON.parse(data.textContent);
  var colours = ["#2754c5", "#e07b39", "#2f9e6e", "#b8418f", "#7a5cc4", "#c9a227", "#3a9bb5", "#8c564b"];
  new Chart(canvas, {
    type: "bar",
    data: {
      labels: chart.labels,
      datasets: chart.series.map(function (series, index) {
        return { label: series.label, data: series.data, backgroundColor: colours[index % colours.length] };
      })
    },
    options: {
      animation: false,
      responsive: true,
      maintainAspectRatio: false,
      scales: {
        x: { stacked: true },
        y: { stacked: true, beginAtZero: true, title: { display: true, text: "credits" } }
      }
    }
  });
  canvas.setAttribute("data-drawn", String(chart.series.length));
})();

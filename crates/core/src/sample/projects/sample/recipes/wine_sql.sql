-- Each input is a view named after its dataset; the result becomes the one output.
SELECT cultivar,
       COUNT(*) AS wines,
       ROUND(AVG(alcohol), 2) AS alcohol,
       ROUND(AVG(color_intensity), 2) AS color_intensity,
       ROUND(AVG(proline), 1) AS proline
FROM wine
GROUP BY cultivar
ORDER BY cultivar

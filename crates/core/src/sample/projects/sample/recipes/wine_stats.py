import capstan

wine = capstan.Dataset("wine").to_pandas()
summary = wine.groupby("cultivar", as_index=False).agg(
    wines=("alcohol", "size"),
    alcohol=("alcohol", "mean"),
    color_intensity=("color_intensity", "mean"),
    proline=("proline", "mean"),
)
print(summary.to_string(index=False))
capstan.Output("wine_by_cultivar").write(summary)

use super::*;

#[test]
fn grid_is_a_png_of_the_expected_size() {
    let image: Vec<f32> = (0..64).map(|i| i as f32).collect();
    let rows = vec![("SEVEN".to_string(), vec![image.as_slice(), image.as_slice()])];
    let png = grid(&rows, &[8, 8], Scale { low: 0.0, high: 63.0 }, 4);
    let decoded = image::load_from_memory(&png).unwrap();
    assert!(decoded.width() > 4 * 8 && decoded.height() >= 8);
    assert_eq!(png, grid(&rows, &[8, 8], Scale { low: 0.0, high: 63.0 }, 4), "deterministic");
}

fn labels(axis: &Axis) -> Vec<&str> {
    axis.ticks.iter().map(|(_, text)| text.as_str()).collect()
}

#[test]
fn linear_ticks_are_nice_short_and_at_least_five() {
    let steps = Axis::fit([0.0, 3000.0], false);
    assert_eq!(labels(&steps), ["0", "500", "1000", "1500", "2000", "2500", "3000"]);
    let accuracy = Axis::fit([0.08, 0.97], false);
    assert_eq!(labels(&accuracy), ["0", "0.2", "0.4", "0.6", "0.8", "1.0"]);
    // A tiny range around zero: no `-0.00000047683715820312`.
    let tiny = Axis::fit([-4.76837158203125e-7, 3.1e-7], false);
    assert!(labels(&tiny).iter().all(|t| t.len() <= 5), "{:?}", labels(&tiny));
    assert_eq!(labels(&tiny), ["-5e-7", "-4e-7", "-3e-7", "-2e-7", "-1e-7", "0", "1e-7", "2e-7", "3e-7", "4e-7"]);
    let lr = Axis::fit([3e-4, 3e-4], false);
    assert_eq!((lr.min, lr.max), (0.0, 6e-4));
    assert_eq!(labels(&lr), ["0", "1e-4", "2e-4", "3e-4", "4e-4", "5e-4", "6e-4"]);
    for (low, high) in [(0.0, 1.0), (2.3, 2.31), (-7.0, 1234.5), (1e-9, 3e-9), (5.0, 5.0), (0.0, 1e7)] {
        let axis = Axis::fit([low, high], false);
        assert!(axis.ticks.len() >= 5 && axis.ticks.len() <= 11, "{low}..{high}: {:?}", labels(&axis));
        assert!(axis.min <= low && axis.max >= high);
        assert!(labels(&axis).iter().all(|t| t.len() <= 7), "{:?}", labels(&axis));
    }
}

#[test]
fn log_ticks_are_at_least_five() {
    assert_eq!(labels(&Axis::fit([0.3, 2.2], true)), ["0.1", "0.2", "0.5", "1", "2", "5", "10"]);
    assert_eq!(labels(&Axis::fit([0.002, 0.009], true)), ["0.001", "0.002", "0.003", "0.005", "0.007", "0.01"]);
    assert_eq!(labels(&Axis::fit([1e-7, 2.0], true)).len(), 9);
    assert!(labels(&Axis::fit([1e-7, 2.0], true)).contains(&"1e-7"));
    let empty = Axis::fit([f64::NAN, -1.0], true);
    assert!(empty.ticks.len() >= 5);
}

#[test]
fn charts_have_axes_titles_grid_and_an_outside_legend() {
    let series = vec![
        Series {
            name: "train".into(),
            color: PALETTE[0],
            points: vec![(0.0, 2.3), (100.0, 0.5), (200.0, f64::NAN), (300.0, 0.1)],
        },
        Series { name: "val".into(), color: PALETTE[1], points: vec![(0.0, 2.3), (300.0, 0.3)] },
    ];
    let svg = charts_svg(&[Panel::steps("loss", "cross-entropy", series).log_y()]);
    assert!(svg.contains(">step</text>") && svg.contains("cross-entropy (log scale)"));
    assert!(svg.matches(r##"stroke="#e4e4e4""##).count() >= 10, "a grid line per tick");
    // The legend lies right of the plot area.
    let legend_x = PLOT.0 + PLOT.2 + 16.0;
    assert!(svg.contains(&format!(r#"<line x1="{legend_x:.2}""#)));
    // The NaN splits the train line: a line, then a lone point.
    assert_eq!((svg.matches("<polyline").count(), svg.matches("<circle").count()), (2, 1));
    let again = charts_svg(&[Panel::steps("loss", "cross-entropy", Vec::new())]);
    assert!(again.contains("</svg>"));
}

#[test]
fn small_pictures_are_scaled_up_with_a_colour_bar() {
    let std: Vec<f32> = (0..64).map(|i| i as f32 / 64.0).collect();
    let png = heatmap_tiles(
        &[(std.as_slice(), "pixel std".into())],
        &[8, 8],
        Scale { low: 0.0, high: 1.0 },
        ColorMap::Sequential,
        1,
        200,
        "std",
    );
    let image = image::load_from_memory(&png).unwrap().to_rgb8();
    assert!(image.width() >= 200 + 40 && image.height() >= 200, "{}x{}", image.width(), image.height());
    // The colour bar's top is the map's last colour.
    let top = ColorMap::Sequential.color(1.0);
    assert!(image.pixels().any(|p| p.0 == top));
    let row: Vec<f32> = (0..64).map(|i| i as f32).collect();
    let matrix = matrix_heatmap(
        &[("example 3".into(), row.as_slice())],
        Scale { low: 0.0, high: 63.0 },
        ColorMap::Sequential,
        "batch example",
        "gradient",
    );
    let matrix = image::load_from_memory(&matrix).unwrap();
    assert!(matrix.width() >= 320 && matrix.height() >= 100);
    let two = tiles_at(
        &[(std.as_slice(), "1>1".into()), (std.as_slice(), "2>7".into())],
        &[8, 8],
        Scale { low: 0.0, high: 1.0 },
        8,
        96,
    );
    assert!(image::load_from_memory(&two).unwrap().width() >= 200);
    assert_eq!(
        png,
        heatmap_tiles(
            &[(std.as_slice(), "pixel std".into())],
            &[8, 8],
            Scale { low: 0.0, high: 1.0 },
            ColorMap::Sequential,
            1,
            200,
            "std"
        )
    );
}

#[test]
fn color_maps_span_their_anchors() {
    assert_eq!(ColorMap::Sequential.color(0.0), [68, 1, 84]);
    assert_eq!(ColorMap::Diverging.color(0.5), [247, 247, 247]);
    assert_eq!(ColorMap::Diverging.color(2.0), [178, 24, 43]);
    assert_eq!(ColorMap::Sequential.color(f32::NAN), [0, 0, 0]);
}

#[test]
fn histogram_is_svg() {
    let svg = histogram_svg("pixels <raw>", &[0.0, 1.0, 2.0], &[3, 0]);
    assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
    assert!(svg.contains("pixels &lt;raw&gt;"));
    assert_eq!(svg.matches("<rect").count(), 3);
}

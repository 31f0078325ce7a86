//! The plot, with `plotters` (SVG backend only): B-only accuracy per epoch with the seed
//! spread (top), the steps per epoch on which RedReg suppresses a modality and OGM-GE scales
//! one down (bottom). Every series has its own marker (and in the bottom panel a small
//! sideways offset), so series that coincide stay distinguishable, and a series at zero in
//! every epoch is named in a note above the axis.

use super::args::Args;
use super::data::{Dataset, Res};
use super::report::epoch_mean;
use super::train::{EpochLog, Loss, Mode, Pipeline, RunLog};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

fn color(m: Mode) -> RGBColor {
    match m {
        Mode::Baseline => RGBColor(40, 40, 40),
        Mode::RedReg(Pipeline::Script) => RGBColor(214, 39, 40),
        Mode::RedReg(Pipeline::Clean) => RGBColor(31, 119, 180),
        Mode::RedReg(Pipeline::SkipDropped) => RGBColor(44, 160, 44),
        Mode::OgmGe => RGBColor(148, 103, 189),
        Mode::BAlone => RGBColor(255, 127, 14),
    }
}

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

/// Marker glyphs, one per series: a text glyph centred on the point, so that every series
/// has its own shape with one element type (lines that coincide stay distinguishable).
const GLYPHS: [&str; 8] = ["●", "▲", "✕", "○", "■", "◆", "△", "□"];

fn marker<C>(shape: usize, at: C, c: RGBColor) -> Text<'static, C, &'static str> {
    let style = ("sans-serif", 13)
        .into_font()
        .color(&c)
        .pos(Pos::new(HPos::Center, VPos::Center));
    Text::new(GLYPHS[shape % GLYPHS.len()], at, style)
}

pub fn write(
    path: &str,
    a: &Args,
    ds: &Dataset,
    loss: Loss,
    named: &[(Mode, &[RunLog])],
) -> Res<()> {
    if let Some(dir) = std::path::Path::new(path).parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir)?;
        }
    }
    let root = SVGBackend::new(path, (960, 820)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(450);
    let title = format!(
        "{}: A = {}, B = {}; {} loss",
        a.dataset.name(),
        ds.names[0],
        ds.names[1],
        loss.name()
    );
    accuracy_panel(&top, &title, named)?;
    let steps = (ds.train.len() / a.batch) as f64;
    suppression_panel(&bottom, steps, named)?;
    root.present()?;
    Ok(())
}

fn accuracy_panel(area: &Area<'_>, title: &str, named: &[(Mode, &[RunLog])]) -> Res<()> {
    let epochs = named[0].1[0].epochs.len();
    let seeds = named[0].1.len();
    let all = named
        .iter()
        .flat_map(|(_, r)| r.iter().flat_map(|r| r.epochs.iter().map(|l| l.acc[1])));
    let lo = (all.clone().fold(1.0, f64::min) * 10.0).floor() / 10.0;
    let hi = ((all.fold(0.0, f64::max) * 10.0).ceil() / 10.0).max(lo + 0.1);
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!("{title}. B-only test accuracy per epoch (line: mean of {seeds} seeds; band: min–max)"),
            ("sans-serif", 17),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(50)
        .build_cartesian_2d(0.5f64..epochs as f64 + 0.5, lo..hi)?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc("accuracy")
        .x_labels(epochs.min(16))
        .x_label_formatter(&|x| format!("{x:.0}"))
        .light_line_style(WHITE.mix(0.0))
        .draw()?;
    for (shape, &(mode, runs)) in named.iter().enumerate() {
        let c = color(mode);
        let at = |e: usize, f: fn(f64, f64) -> f64, init: f64| {
            runs.iter().map(|r| r.epochs[e].acc[1]).fold(init, f)
        };
        let mut band: Vec<(f64, f64)> = (0..epochs)
            .map(|e| ((e + 1) as f64, at(e, f64::max, 0.0)))
            .collect();
        band.extend(
            (0..epochs)
                .rev()
                .map(|e| ((e + 1) as f64, at(e, f64::min, 1.0))),
        );
        chart.draw_series(std::iter::once(Polygon::new(band, c.mix(0.12).filled())))?;
        let mean: Vec<(f64, f64)> = (0..epochs)
            .map(|e| ((e + 1) as f64, epoch_mean(runs, e, |l| l.acc[1])))
            .collect();
        chart.draw_series(LineSeries::new(mean.clone(), c.stroke_width(2)))?;
        chart
            .draw_series(mean.into_iter().map(|p| marker(shape, p, c)))?
            .label(mode.label())
            .legend(move |(x, y)| {
                EmptyElement::at((x, y))
                    + PathElement::new(vec![(0, 0), (24, 0)], c.stroke_width(2))
                    + marker(shape, (12, 0), c)
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .draw()?;
    Ok(())
}

/// One line of the bottom panel.
struct Series {
    name: String,
    color: RGBColor,
    dashed: bool,
    points: Vec<(f64, f64)>,
}

fn suppression_panel(area: &Area<'_>, steps: f64, named: &[(Mode, &[RunLog])]) -> Res<()> {
    let epochs = named[0].1[0].epochs.len();
    let mut series = Vec::new();
    for &(mode, runs) in named {
        let per_epoch = |f: fn(&EpochLog) -> f64| -> Vec<(f64, f64)> {
            (0..epochs)
                .map(|e| ((e + 1) as f64, epoch_mean(runs, e, f)))
                .collect()
        };
        let c = color(mode);
        let mut push = |name: String, dashed: bool, points| {
            series.push(Series {
                name,
                color: c,
                dashed,
                points,
            })
        };
        match mode {
            Mode::RedReg(p) => {
                let p = p.name();
                push(
                    format!("{p}: A suppressed"),
                    false,
                    per_epoch(|l| (l.suppressed[0][0] + l.suppressed[0][1]) as f64),
                );
                push(
                    format!("{p}: B suppressed"),
                    true,
                    per_epoch(|l| (l.suppressed[1][0] + l.suppressed[1][1]) as f64),
                );
                push(
                    format!("{p}: B suppressed on dropped batches"),
                    true,
                    per_epoch(|l| l.suppressed[1][1] as f64),
                );
            }
            Mode::OgmGe => {
                push(
                    "OGM-GE: A scaled down".into(),
                    false,
                    per_epoch(|l| (l.suppressed[0][0] + l.suppressed[0][1]) as f64),
                );
                push(
                    "OGM-GE: B scaled down".into(),
                    true,
                    per_epoch(|l| (l.suppressed[1][0] + l.suppressed[1][1]) as f64),
                );
            }
            _ => {}
        }
    }
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!(
                "steps per epoch (of {steps}) on which RedReg suppresses A or B / OGM-GE scales one down, mean over seeds"
            ),
            ("sans-serif", 17),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(50)
        .build_cartesian_2d(0.5f64..epochs as f64 + 0.5, -0.04 * steps..steps * 1.02)?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc("steps")
        .y_label_formatter(&|y| format!("{y:.0}"))
        .x_labels(epochs.min(16))
        .x_label_formatter(&|x| format!("{x:.0}"))
        .light_line_style(WHITE.mix(0.0))
        .draw()?;
    let mut at_zero = Vec::new();
    // Counts of different series often coincide (at 0 above all): each series is dodged
    // sideways by a few hundredths of an epoch, so its markers stay visible.
    let n = series.len() as f64;
    for (shape, mut s) in series.into_iter().enumerate() {
        let c = s.color;
        let dx = 0.05 * (shape as f64 - (n - 1.0) / 2.0);
        s.points.iter_mut().for_each(|p| p.0 += dx);
        if s.points.iter().all(|p| p.1 == 0.0) {
            at_zero.push((shape, s.name.clone(), c));
        }
        if s.dashed {
            chart.draw_series(DashedLineSeries::new(
                s.points.clone(),
                7,
                4,
                c.stroke_width(2),
            ))?;
        } else {
            chart.draw_series(LineSeries::new(s.points.clone(), c.stroke_width(2)))?;
        }
        chart
            .draw_series(s.points.into_iter().map(|p| marker(shape, p, c)))?
            .label(s.name)
            .legend(move |(x, y)| {
                EmptyElement::at((x, y))
                    + PathElement::new(vec![(0, 0), (24, 0)], c.stroke_width(2))
                    + marker(shape, (12, 0), c)
            });
    }
    // Lines that stay on the axis are hidden by it and by each other: name them.
    for (i, (shape, name, c)) in at_zero.iter().enumerate() {
        let y = steps * (0.06 + 0.06 * i as f64);
        chart.draw_series(std::iter::once(marker(*shape, (1.0, y), *c)))?;
        chart.draw_series(std::iter::once(Text::new(
            format!("{name}: 0 in every epoch (on the axis)"),
            (1.25, y + steps * 0.015),
            ("sans-serif", 13).into_font().color(c),
        )))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .draw()?;
    Ok(())
}

//! `out/balance.svg` with `plotters` (SVG backend only): B-probe accuracy per epoch with the
//! seed spread (top), RedReg's suppression counts per epoch (bottom).

use super::data::{Res, N_TRAIN};
use super::report::epoch_mean;
use super::train::{Mode, Pipeline, RunLog, BATCH};
use plotters::coord::Shift;
use plotters::prelude::*;

fn color(m: Mode) -> RGBColor {
    match m {
        Mode::Baseline => RGBColor(40, 40, 40),
        Mode::RedReg(Pipeline::Script) => RGBColor(214, 39, 40),
        Mode::RedReg(Pipeline::Clean) => RGBColor(31, 119, 180),
        Mode::RedReg(Pipeline::SkipDropped) => RGBColor(44, 160, 44),
        Mode::BAlone => RGBColor(255, 127, 14),
    }
}

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

pub fn write(path: &str, named: &[(Mode, &[RunLog])]) -> Res<()> {
    if let Some(dir) = std::path::Path::new(path).parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir)?;
        }
    }
    let root = SVGBackend::new(path, (900, 760)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(440);
    accuracy_panel(&top, named)?;
    suppression_panel(&bottom, named)?;
    root.present()?;
    Ok(())
}

fn accuracy_panel(area: &Area<'_>, named: &[(Mode, &[RunLog])]) -> Res<()> {
    let epochs = named[0].1[0].epochs.len();
    let seeds = named[0].1.len();
    let all = named
        .iter()
        .flat_map(|(_, r)| r.iter().flat_map(|r| r.epochs.iter().map(|l| l.acc[1])));
    let lo = (all.clone().fold(1.0, f64::min) * 10.0).floor() / 10.0;
    let hi = ((all.fold(0.0, f64::max) * 10.0).ceil() / 10.0).max(lo + 0.1);
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!("B-probe test accuracy per epoch (line: mean of {seeds} seeds; band: min–max)"),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(50)
        .build_cartesian_2d(1f64..epochs as f64, lo..hi)?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc("accuracy")
        .x_labels(epochs.min(16))
        .x_label_formatter(&|x| format!("{x:.0}"))
        .light_line_style(WHITE.mix(0.0))
        .draw()?;
    for &(mode, runs) in named {
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
        chart.draw_series(std::iter::once(Polygon::new(band, c.mix(0.15).filled())))?;
        let mean: Vec<(f64, f64)> = (0..epochs)
            .map(|e| ((e + 1) as f64, epoch_mean(runs, e, |l| l.acc[1])))
            .collect();
        chart
            .draw_series(LineSeries::new(mean, c.stroke_width(2)))?
            .label(mode.label())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .draw()?;
    Ok(())
}

fn suppression_panel(area: &Area<'_>, named: &[(Mode, &[RunLog])]) -> Res<()> {
    let epochs = named[0].1[0].epochs.len();
    let steps = (N_TRAIN / BATCH) as f64;
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!("RedReg: steps per epoch (of {steps}) that suppress A or B, mean over seeds"),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(50)
        .build_cartesian_2d(1f64..epochs as f64, 0f64..steps)?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc("steps")
        .y_label_formatter(&|y| format!("{y:.0}"))
        .x_labels(epochs.min(16))
        .x_label_formatter(&|x| format!("{x:.0}"))
        .light_line_style(WHITE.mix(0.0))
        .draw()?;
    for &(mode, runs) in named {
        let Mode::RedReg(p) = mode else { continue };
        let c = color(mode);
        let series = |f: fn(&super::train::EpochLog) -> f64| -> Vec<(f64, f64)> {
            (0..epochs)
                .map(|e| ((e + 1) as f64, epoch_mean(runs, e, f)))
                .collect()
        };
        let a = series(|l| (l.suppressed[0][0] + l.suppressed[0][1]) as f64);
        let b = series(|l| (l.suppressed[1][0] + l.suppressed[1][1]) as f64);
        let bd = series(|l| l.suppressed[1][1] as f64);
        chart
            .draw_series(LineSeries::new(a, c.stroke_width(3)))?
            .label(format!("{}: A suppressed", p.name()))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(3)));
        chart
            .draw_series(DashedLineSeries::new(b, 7, 4, c.stroke_width(2)))?
            .label(format!("{}: B suppressed", p.name()))
            .legend(move |(x, y)| {
                EmptyElement::at((x, y))
                    + PathElement::new(vec![(0, 0), (7, 0)], c.stroke_width(2))
                    + PathElement::new(vec![(11, 0), (18, 0)], c.stroke_width(2))
            });
        chart
            .draw_series(DottedLineSeries::new(bd, 0, 6, move |pt| {
                Circle::new(pt, 2, c.filled())
            }))?
            .label(format!("{}: B suppressed on dropped batches", p.name()))
            .legend(move |(x, y)| {
                EmptyElement::at((x, y))
                    + Circle::new((2, 0), 2, c.filled())
                    + Circle::new((10, 0), 2, c.filled())
                    + Circle::new((18, 0), 2, c.filled())
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .draw()?;
    Ok(())
}

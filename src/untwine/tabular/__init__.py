"""Synthetic tables: the CTGAN/TVAE table transformer, a mixed likelihood, the tabular multi-stage
model, fidelity / utility / privacy evaluation (untwine.tabular.evaluation) and interpretability
(untwine.tabular.interpret); DESIGN section 9."""
from untwine.tabular.likelihood import MixedLikelihood
from untwine.tabular.model import TableData, TabularMultiStage
from untwine.tabular.transformer import Span, TableTransformer

__all__ = ["MixedLikelihood", "Span", "TableData", "TableTransformer", "TabularMultiStage"]

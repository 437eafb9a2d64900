"""Analysis lenses on LoRA adapters and merges: pure tensor functions, no model code.

spectra         singular values of task / merged deltas via QR of the factors, energy, eff. rank
subspaces       principal angles, B/A subspace overlap, task-vector cosine, shared B directions,
                OSRM interference
divergence      DivMerge divergence matrix D_{X_i}(theta_i || theta_j), Spearman vs scores
representation  representation bias (mean L1 of hidden states, merged vs expert) per layer
calibration     reliability bins, ECE, confidently-wrong share, agreement with the expert
stability       coefficient range / std / negatives (SourceJS Fig. 2)
"""

from mergecore.analysis.calibration import (
    ReliabilityBins,
    agreement,
    confidence_summary,
    confidently_wrong_share,
    expected_calibration_error,
    reliability_bins,
)
from mergecore.analysis.divergence import divergence_matrix, mean_divergence, spearman_with_scores
from mergecore.analysis.representation import mean_representation_bias, representation_bias
from mergecore.analysis.spectra import (
    effective_rank,
    energy_at_rank,
    lora_singular_values,
    module_spectra,
)
from mergecore.analysis.stability import stability
from mergecore.analysis.subspaces import (
    a_overlap_matrix,
    b_overlap_matrix,
    orthonormal_basis,
    osrm_interference,
    osrm_interference_matrix,
    principal_angles,
    shared_output_directions,
    subspace_overlap,
    task_vector_cosine,
)

__all__ = [
    "ReliabilityBins", "a_overlap_matrix", "agreement", "b_overlap_matrix", "confidence_summary",
    "confidently_wrong_share", "divergence_matrix", "effective_rank", "energy_at_rank",
    "expected_calibration_error", "lora_singular_values", "mean_divergence",
    "mean_representation_bias", "module_spectra", "orthonormal_basis",
    "osrm_interference", "osrm_interference_matrix", "principal_angles", "reliability_bins",
    "representation_bias", "shared_output_directions", "spearman_with_scores", "stability",
    "subspace_overlap", "task_vector_cosine",
]

{#- A user's exposure rounded up to whole days, at least 1: the histogram cells' exposure. -#}
{% macro exposure_days_cell(exposure_days) -%}
    case
        when {{ exposure_days }} <= 1 then 1
        else cast(ceil({{ exposure_days }}) as {{ dbt.type_int() }})
    end
{%- endmacro %}
